"""One training loop for every stage that trains.

Images stay in memory as one normalized float tensor; batches are sliced from it and
augmented as whole batches (no per-sample Python, no DataLoader workers), which is what
keeps small datasets fast on a 2-core CPU. Each stage supplies a step function
``step_fn(images, labels, index) -> (loss, logits)``; ``index`` lets a stage look up
per-sample data such as precomputed teacher logits. Beside it: evaluate.py (predict,
accuracy), augment.py (batch crop and flip), checkpoint.py (the checkpoint format, the
diagnosis when training diverges), batches.py (where batches come from).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgekd.data.unlabeled import UNLABELED
from edgekd.io import artifacts  # artifacts.save_checkpoint looked up per call: tests stop a run inside it
from edgekd.models.bn import recalibrate_batch_norm
from edgekd.train import distributed
from edgekd.train.checkpoint import (
    TrainingParts,
    all_finite,
    checkpoint_identity,
    checkpoint_state,
    diverged_error,
    non_finite_cause,
    restore_checkpoint,
)
from edgekd.train.compute import current
from edgekd.train.config import TrainConfig
from edgekd.train.evaluate import accuracy
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData
from edgekd.train.threads import ThreadTuner

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FitResult:
    best_val_top1: float
    best_epoch: int
    epochs: list = field(default_factory=list)  # per epoch: loss, train_top1, val_top1, seconds
    seconds: float = 0.0
    images_per_second: float = 0.0
    compute: dict = field(default_factory=dict)  # device, precision, channels_last it trained with


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on biases and batch-norm parameters (the usual practice)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step for all parameters instead of a few per tensor (the same update in
    # another order of rounding; 2.4x faster on a 68-tensor student, benchmarks/results/training-overheads.md)
    fused = {"fused": True} if _fusable(decay + no_decay) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


def _fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused optimizers take these parameters: floating point, all on the CPU or all on one GPU."""
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


def fit(model: nn.Module, step_fn: StepFn, data: TrainData, cfg: TrainConfig,
        run: RunOptions = DEFAULT_RUN) -> FitResult:
    """Train `model` in place with `step_fn`; keep the weights of the best val epoch.

    The schedule is one-cycle: linear warm-up over the first 10% of steps, then cosine
    decay to zero, which converges well in the few epochs a CPU run can afford.

    With `run.checkpoint` (a file path), the whole training state is saved there atomically
    at the end of every epoch (see `edgekd.train.checkpoint`); with `run.resume` and that file
    present, training continues from the epoch after the saved one and ends with the same
    weights as an uninterrupted run (CPU, deterministic algorithms, same thread count).
    No checkpoint is written for an epoch whose loss or weights are not finite.
    """
    from edgekd.progress import progress_bar

    seed, desc, progress, checkpoint, resume, log = (run.seed, run.desc, run.progress, run.checkpoint, run.resume,
                                                     run.log)

    # Data order and augmentation draw only from this generator (batches are sliced from
    # in-memory tensors: no DataLoader, no worker processes), so its state plus the
    # global torch RNG (dropout, if a model has any) is all the randomness to checkpoint.
    generator = torch.Generator().manual_seed(seed)
    compute = current()
    compute.model(model)  # in place: the optimizer below holds the same parameters
    scaler = compute.grad_scaler()
    ranks = distributed.world_size() if distributed.active() else 1  # torchrun: each global batch split over ranks
    if ranks > 1:
        distributed.broadcast_parameters(model)
    optimizer = make_optimizer(model, cfg)
    train, val = data.train, data.val
    recompute_bn = compute.recomputes_batch_norm(model)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    warmup = max(1, total_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    # lr_factor is a plain function, so LambdaLR.state_dict() holds only numbers and lists
    # (its lr_lambdas entry is None): the checkpoint stays loadable with weights_only=True.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # the first epoch always counts as the best so far: never hand back untrained weights
    result = FitResult(best_val_top1=-math.inf, best_epoch=0)
    best_state = copy.deepcopy(model.state_dict())
    identity = checkpoint_identity(cfg, desc, seed, len(train), len(val))
    parts = TrainingParts(model, optimizer, scheduler, generator)
    first_epoch, seen, seconds_before = 1, 0, 0.0
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        saved = restore_checkpoint(Path(checkpoint), identity, cfg, parts)
        first_epoch = saved["epoch"] + 1
        best_state = saved["best"]["state"]
        result.best_val_top1, result.best_epoch = float(saved["best"]["val_top1"]), int(saved["best"]["epoch"])
        result.epochs = list(saved["history"])
        seen, seconds_before = int(saved["seen"]), float(saved["seconds"])
        if log is not None:
            log(f"[{desc}] resuming after epoch {saved['epoch']} of {cfg.epochs} from {checkpoint}")
            if saved.get("threads") != torch.get_num_threads():
                log(f"[{desc}] note: the checkpoint was written with {saved.get('threads')} torch threads, now "
                    f"{torch.get_num_threads()}; the final weights may differ in the last bits from an "
                    "uninterrupted run")
    # compute.threads auto: re-measured on these steps (at the start and every few epochs)
    tuner = ThreadTuner(compute.threads, steps_per_epoch=steps_per_epoch, desc=desc, log=log,
                        device_type=compute.device_type)
    start = time.perf_counter()
    # one line and one metrics row per finished epoch; rank 0 alone writes
    epochs_out = (run.epoch_log(run.label, first_epoch, cfg.epochs)
                  if run.epoch_log is not None and distributed.is_main() else None)
    bar = progress_bar(total=total_steps, initial=(first_epoch - 1) * steps_per_epoch, desc=desc, unit="step",
                       enabled=progress, leave=False, dynamic_ncols=True)
    epoch_seconds = []  # of the epochs trained by this process: the ETA
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            tuner.epoch_started(epoch)
            model.train()
            loss_sum, correct, trained, labeled = 0.0, 0, 0, 0
            for i, (images, labels, index) in enumerate(train.batches(cfg.batch_size, generator, cfg.augment)):
                if ranks > 1:
                    if len(index) < 2 * ranks:  # every rank needs two samples for batch norm
                        continue
                    images, labels, index = distributed.shard(images, labels, index)
                images, labels = compute.batch(images), labels.to(compute.device)
                with compute.autocast():
                    loss, logits = step_fn(images, labels, index)
                if not torch.isfinite(loss):
                    step = (epoch - 1) * steps_per_epoch + i + 1
                    raise diverged_error(desc, f"loss became {loss.item()}", epoch, cfg, checkpoint,
                                    step=step, cause=non_finite_cause(desc, cfg, images, model, step))
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if ranks > 1:
                        distributed.average_gradients(model)
                    optimizer.step()
                else:  # fp16 on CUDA: scaled gradients, steps skipped on overflow
                    scaler.scale(loss).backward()
                    if ranks > 1:
                        distributed.average_gradients(model)
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                loss_sum += loss.item() * len(index)
                correct += int((logits.argmax(1) == labels).sum())  # an unlabeled image (-1) never matches
                trained += len(index)
                labeled += int((labels != UNLABELED).sum())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
                tuner.step_done(len(index))
            if ranks > 1:
                distributed.average_buffers(model)
            if not all_finite(model):  # a finite loss can still leave inf/NaN weights behind
                raise diverged_error(desc, "weights became non-finite", epoch, cfg, checkpoint)
            if recompute_bn:  # statistics that match this epoch's weights, before val picks the best epoch
                recalibrate_batch_norm(model, _shuffled_images(train, cfg.batch_size, seed, epoch, compute),
                                       autocast=compute.autocast)
            val_top1 = accuracy(model, val)
            result.epochs.append(
                {
                    "epoch": epoch,
                    "loss": loss_sum / max(1, trained),
                    "train_top1": 100.0 * correct / max(1, labeled),
                    "val_top1": val_top1,
                    "seconds": time.perf_counter() - epoch_start,
                }
            )
            seen += trained * ranks
            epoch_seconds.append(result.epochs[-1]["seconds"])
            if epochs_out is not None:  # before the checkpoint: a resumed run drops a row it wrote again
                bar.clear()
                epochs_out.epoch({**result.epochs[-1], "epochs": cfg.epochs, "lr": optimizer.param_groups[0]["lr"],
                                  "images_per_second": trained * ranks / max(epoch_seconds[-1], 1e-9),
                                  "eta_seconds": (cfg.epochs - epoch) * sum(epoch_seconds) / len(epoch_seconds)})
            if val_top1 > result.best_val_top1:
                result.best_val_top1, result.best_epoch = val_top1, epoch
                best_state = copy.deepcopy(model.state_dict())
            if checkpoint is not None and distributed.is_main():  # rank 0 alone writes
                artifacts.save_checkpoint(checkpoint, checkpoint_state(
                    identity, epoch, parts, best_state, result, seen, seconds_before + time.perf_counter() - start,
                ))
    finally:
        bar.close()
        tuner.finish()
        if epochs_out is not None:
            epochs_out.close()
    if cfg.epochs == 0:
        result.best_val_top1 = accuracy(model, val)
    model.load_state_dict(best_state)
    compute.leave(model)
    result.compute = {**compute.to_dict(), "recompute_batch_norm": recompute_bn, **tuner.record()}
    result.seconds = seconds_before + time.perf_counter() - start
    result.images_per_second = seen / result.seconds if result.seconds > 0 else 0.0
    return result


def _shuffled_images(train, batch_size: int, seed: int, epoch: int, compute):
    """Un-augmented training images in a random order of their own (a folder's files come
    sorted by class; the training generator's state is left alone, so data order and resume
    stay as they were), on the device: what batch-norm statistics are recomputed from."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    for images, _labels, _index in train.batches(batch_size, generator, False):
        yield compute.batch(images)


def cross_entropy_step(model: nn.Module) -> StepFn:
    """Plain supervised step (used to train a teacher); unlabeled images (-1) add nothing."""
    from edgekd.train.labels import labeled_cross_entropy

    def step(images, labels, _index):
        logits = model(images)
        return labeled_cross_entropy(logits, labels), logits

    return step
