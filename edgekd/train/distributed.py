"""Data-parallel training on an existing engine: `torchrun --nproc-per-node N -m edgekd compress`.

torchrun starts N processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; edgekd joins the process group (gloo on the CPU, nccl on CUDA) and:

- every rank builds the same models from the same seed (parameters are broadcast from rank 0
  at the start of each training anyway) and draws the same data order, so each global batch
  (the recipe's batch_size) is split between the ranks: rank r trains on samples r, r+N, ...;
- after each backward pass the gradients are averaged over the ranks (what DDP does), so the
  step equals one process's step on the whole global batch, and at the end of each epoch the
  batch-norm statistics are averaged too (each rank saw other samples);
- rank 0 alone writes the run directory, checkpoints and report; the other ranks work in a
  private copy (edgekd.pipeline.chain) and skip the stages that do not train.

A rank that fails or is terminated exits; torchrun then stops the others, and
`torchrun ... -m edgekd compress --resume RUN_DIR` continues from the last checkpoint.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torchrun."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def active() -> bool:
    import torch.distributed as dist

    return world()[1] > 1 and dist.is_available() and dist.is_initialized()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0) or 0)


def setup(device: str) -> None:
    """Join torchrun's process group (once): nccl for CUDA, gloo on the CPU."""
    import torch
    import torch.distributed as dist

    if world()[1] <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(images, labels, index):
    """This rank's part of a global batch: every world-th sample from its rank on."""
    rank, size = world()
    return images[rank::size], labels[rank::size], index[rank::size]


def broadcast_parameters(model) -> None:
    """Rank 0's parameters and buffers on every rank (same start, whatever each rank built)."""
    import torch.distributed as dist

    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_gradients(model) -> None:
    """The mean of every parameter's gradient over the ranks (one all-reduce per tensor)."""
    import torch.distributed as dist

    size = world()[1]
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(size)


def average_buffers(model) -> None:
    """Float buffers (batch-norm running statistics) averaged over the ranks."""
    import torch.distributed as dist

    size = world()[1]
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(size)
