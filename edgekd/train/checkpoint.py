"""The training loop's checkpoint format, and the diagnosis when training diverges.

A checkpoint is the whole training state at the end of an epoch (model, optimizer,
scheduler, the data generator and the global torch RNG, the best epoch so far and the
history), tagged with the identity of the run it belongs to; resuming from it ends with the
same weights as an uninterrupted run. When the loss or the weights stop being finite, the
error names the checkpoint that is kept (the last finite epoch's) and the likely cause.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import ModelFileError, TrainingDiverged, first_line
from edgekd.io.artifacts import CHECKPOINT_FORMAT, load_checkpoint
from edgekd.train.config import TrainConfig


def checkpoint_identity(cfg: TrainConfig, desc: str, seed: int, train_size: int, val_size: int) -> dict:
    """What a checkpoint must have been written for: the same stage, training config
    (epochs, lr, batch size, ... fix the schedule), seed and data sizes."""
    config = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return {"stage": desc, "config": config, "seed": seed, "train_size": train_size, "val_size": val_size}


@dataclass(frozen=True)
class TrainingParts:
    """What a checkpoint saves and restores the state of."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator


def checkpoint_state(identity, epoch, parts: TrainingParts, best_state, result, seen, seconds) -> dict:
    """The whole training state after `epoch` (`result`: the FitResult so far)."""
    model, optimizer, scheduler, generator = parts.model, parts.optimizer, parts.scheduler, parts.generator
    return {
        "format": CHECKPOINT_FORMAT,
        "identity": identity,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),  # data order and augmentation
        "torch_rng": torch.get_rng_state(),  # the global CPU RNG (dropout, if any)
        "best": {"state": best_state, "val_top1": result.best_val_top1, "epoch": result.best_epoch},
        "history": list(result.epochs),
        "seen": seen,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }


def restore_checkpoint(path: Path, identity: dict, cfg: TrainConfig, parts: TrainingParts) -> dict:
    """Load a checkpoint into model, optimizer, scheduler and generator; any mismatch is a
    ModelFileError that names the file (a checkpoint is never silently ignored)."""
    model, optimizer, scheduler, generator = parts.model, parts.optimizer, parts.scheduler, parts.generator
    saved = load_checkpoint(path)
    if saved.get("identity") != identity:
        raise ModelFileError(
            f"checkpoint '{path}' was written for a different {identity['stage']} setup "
            "(recipe, seed or data changed); start a new run"
        )
    try:
        epoch, best, history = saved["epoch"], saved["best"], saved["history"]
        if not (isinstance(epoch, int) and 1 <= epoch <= cfg.epochs and isinstance(history, list)
                and len(history) == epoch and isinstance(best, dict) and isinstance(best.get("state"), dict)):
            raise ValueError("epoch, history or best-so-far entries are inconsistent")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        model_keys = set(model.state_dict())
        if set(best["state"]) != model_keys:
            raise ValueError("best-so-far weights do not fit the model")
        int(saved["seen"]), float(saved["seconds"]), float(best["val_top1"]), int(best["epoch"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise ModelFileError(
            f"checkpoint '{path}' does not fit this run ({first_line(exc)}); start a new run"
        ) from exc
    return saved


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


USUAL_LR = {"adamw": 1e-3, "sgd": 0.1}
LARGE_LR = {"adamw": 0.1, "sgd": 1.0}  # above these, a learning rate is far beyond the usual


def diverged_error(desc: str, what: str, epoch: int, cfg: TrainConfig, checkpoint, step: int | None = None,
                   cause: str | None = None) -> TrainingDiverged:
    """One line: what diverged where, the checkpoint kept, and the likely cause with its fix."""
    kept = ""
    if checkpoint is not None and epoch > 1 and Path(checkpoint).is_file():
        kept = f"; the checkpoint of epoch {epoch - 1} is kept in {checkpoint}"
    where = f"at epoch {epoch}, step {step}" if step is not None else f"at epoch {epoch}"
    return TrainingDiverged(f"{desc}: {what} {where}{kept}; {cause or _lr_advice(desc, cfg)}")


def _lr_advice(desc: str, cfg: TrainConfig) -> str:
    limit = LARGE_LR.get(cfg.optimizer, 1.0)
    if not cfg.lr <= limit:  # inf and NaN included
        return (f"{desc}.lr {cfg.lr:g} is very large for {cfg.optimizer} (usual: about "
                f"{USUAL_LR.get(cfg.optimizer, 1e-3):g}): start a new run with a lower {desc}.lr")
    return f"start a new run with a lower {desc}.lr (now {cfg.lr})"


def non_finite_cause(desc: str, cfg: TrainConfig, images: torch.Tensor, model: nn.Module, step: int) -> str:
    """Why the loss of `step` is not finite: the inputs, the weights (broken by an earlier
    update), a very large lr, or else the loss itself (its settings)."""
    if not bool(torch.isfinite(images).all()):
        return ("the inputs contain NaN or inf (check the data: a channel with zero variance, or its mean/std); "
                "a lower lr will not help")
    if not all_finite(model):
        when = f"at step {step - 1}" if step > 1 else "before the first step"
        return f"the weights became non-finite {when}: {_lr_advice(desc, cfg)}"
    advice = _lr_advice(desc, cfg)
    if not cfg.lr <= LARGE_LR.get(cfg.optimizer, 1.0):
        return advice
    settings = "" if desc.startswith("teacher") else ", or check the loss settings (distill.temperature, alpha, terms)"
    return f"the inputs and weights are finite, so the loss itself overflowed: {advice}{settings}"
