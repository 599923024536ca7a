"""One training loop for every stage that trains.

Images stay in memory as one normalized float tensor; batches are sliced from it and
augmented as whole batches (no per-sample Python, no DataLoader workers), which is what
keeps small datasets fast on a 2-core CPU. Each stage supplies a step function
``step_fn(images, labels, index) -> (loss, logits)``; ``index`` lets a stage look up
per-sample data such as precomputed teacher logits.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import TrainingDiverged
from .recipe import TrainConfig

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FitResult:
    best_val_top1: float
    best_epoch: int
    epochs: list = field(default_factory=list)  # per epoch: loss, train_top1, val_top1, seconds
    seconds: float = 0.0
    images_per_second: float = 0.0


def to_tensor(images_uint8: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NCHW -> float32 normalized; the same arithmetic as the ONNX bench preprocess."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after padding by `pad`, and random horizontal flip, per sample.

    Padding replicates the border, so a black background stays black after normalization.
    """
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (torch.arange(h).view(1, h) + dy.view(n, 1)).view(n, 1, h, 1).expand(n, c, h, w)
    cols = (torch.arange(w).view(1, w) + dx.view(n, 1)).view(n, 1, 1, w).expand(n, c, h, w)
    cropped = _crop(padded, rows, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    cropped[flip] = cropped[flip].flip(3)
    return cropped


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c, h, w = rows.shape
    wp = padded.shape[3]
    picked_rows = padded.gather(2, rows[..., :1].expand(n, c, h, wp))  # (n, c, h, wp)
    return picked_rows.gather(3, cols)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for every row of x, in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 in percent."""
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x).argmax(1) == y).float().mean() * 100)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on biases and batch-norm parameters (the usual practice)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def fit(
    model: nn.Module,
    step_fn: StepFn,
    *,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    cfg: TrainConfig,
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Train `model` in place with `step_fn`; keep the weights of the best val epoch.

    The schedule is one-cycle: linear warm-up over the first 10% of steps, then cosine
    decay to zero, which converges well in the few epochs a CPU run can afford.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(train_x) / cfg.batch_size))
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    warmup = max(1, total_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # the first epoch always counts as the best so far: never hand back untrained weights
    result = FitResult(best_val_top1=-math.inf, best_epoch=0)
    best_state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    seen = 0
    bar = tqdm(total=total_steps, desc=desc, unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            loss_sum, correct, trained = 0.0, 0, 0
            for i in range(0, len(order), cfg.batch_size):
                index = order[i : i + cfg.batch_size]
                if len(index) < 2:  # batch norm cannot train on one sample
                    continue
                images, labels = train_x[index], train_y[index]
                if cfg.augment:
                    images = augment_batch(images, generator)
                loss, logits = step_fn(images, labels, index)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"{desc}: loss became {loss.item()} at epoch {epoch}; lower {desc}.lr (now {cfg.lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(index)
                correct += int((logits.argmax(1) == labels).sum())
                trained += len(index)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
            val_top1 = accuracy(model, val_x, val_y)
            result.epochs.append(
                {
                    "epoch": epoch,
                    "loss": loss_sum / max(1, trained),
                    "train_top1": 100.0 * correct / max(1, trained),
                    "val_top1": val_top1,
                    "seconds": time.perf_counter() - epoch_start,
                }
            )
            seen += trained
            if val_top1 > result.best_val_top1:
                result.best_val_top1, result.best_epoch = val_top1, epoch
                best_state = copy.deepcopy(model.state_dict())
    finally:
        bar.close()
    if cfg.epochs == 0:
        result.best_val_top1 = accuracy(model, val_x, val_y)
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    result.images_per_second = seen / result.seconds if result.seconds > 0 else 0.0
    return result


def cross_entropy_step(model: nn.Module) -> StepFn:
    """Plain supervised step (used to train a teacher)."""

    def step(images, labels, _index):
        logits = model(images)
        return nn.functional.cross_entropy(logits, labels), logits

    return step
