"""Data-parallel training on an existing engine: `torchrun --nproc-per-node N -m edgekd compress`.

torchrun starts N processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; edgekd joins the process group (gloo on the CPU, nccl on CUDA) and:

- every rank builds the same models from the same seed (parameters are broadcast from rank 0
  at the start of each training anyway) and draws the same data order, so each global batch
  (the recipe's batch_size) is split between the ranks: rank r trains on samples r, r+N, ...;
- after each backward pass the gradients are averaged over the ranks (what DDP does), so the
  step equals one process's step on the whole global batch, and at the end of each epoch the
  batch-norm statistics are averaged too (each rank saw other samples);
- rank 0 alone writes the run, checkpoints and report; each other rank works in its own copy
  inside the run, state/rank<N> (of a resumed run: what training reads, no models to bench
  nor test images), trains, removes its copy and skips the stages that do not train. Rank 0
  hands the run's real path to the others once it holds the run, removes copies an earlier
  run left (a rank killed -9) and, before the stages it runs alone, waits for the other ranks
  and removes what is left of their copies.

A rank that fails or is terminated exits; torchrun then stops the others, and
`torchrun ... -m edgekd compress --resume RUN_DIR` continues from the last checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

RANK_COPY = re.compile(r"rank\d+")  # state/rank<N>: the working copy of rank N inside the run
# a resumed run's files that no training stage reads: the other ranks' copies leave them out
NOT_COPIED = ("*.onnx", "eval.npz", "report.*", "results.csv", "pareto.png", "export", "*.tmp", "run.lock")


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torchrun."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def rank() -> int:
    """This process's rank: 0 outside torchrun."""
    return world()[0]


def world_size() -> int:
    """How many processes train together: 1 outside torchrun."""
    return world()[1]


def is_main() -> bool:
    """Rank 0: the process that writes the run (the only one outside torchrun)."""
    return rank() == 0


def active() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0) or 0)


def setup(device: str) -> None:
    """Join torchrun's process group (once): nccl for CUDA, gloo on the CPU."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
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

    size = world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(size)


def average_buffers(model) -> None:
    """Float buffers (batch-norm running statistics) averaged over the ranks."""
    import torch.distributed as dist

    size = world_size()
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(size)


def rank_copy(real: Path) -> Path:
    """Where this rank (not 0) works: its own copy inside the run directory `real`."""
    return real / "state" / f"rank{rank()}"


def copy_for_rank(real: Path, work: Path) -> None:
    """A resumed run as rank 0 left it, without what no training reads (models, test images,
    the report) and without the other ranks' copies."""
    def ignored(folder, names):
        skip = set(shutil.ignore_patterns(*NOT_COPIED)(folder, names))
        if Path(folder) == real / "state":
            skip |= {n for n in names if RANK_COPY.fullmatch(n)}
        return skip

    shutil.copytree(real, work, ignore=ignored)


def remove_rank_copies(real: Path) -> None:
    """Rank 0: the other ranks' copies in the run (plain folders only; a link is never followed)."""
    state = real / "state"
    if not state.is_dir():
        return
    for entry in os.scandir(state):
        if RANK_COPY.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def share_run_dir(real: Path | None) -> Path:
    """Rank 0 gives the real path of the run it holds (locked, checked, recipe written); the
    others wait for it here and get it."""
    import torch.distributed as dist

    box = [str(real) if real is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def ranks_done(real: Path | None) -> None:
    """Every rank once it has nothing more to train: the others after removing their copy, rank 0
    (with `real`) before the stages it runs alone, then it removes whatever copy is left."""
    import torch.distributed as dist

    dist.barrier()
    if real is not None:
        remove_rank_copies(real)
