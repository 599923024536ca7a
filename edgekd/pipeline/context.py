"""What the stages of `edgekd compress` share: artifact names inside a run directory, the
Run object, and lazily loaded data and models (so a resumed run rebuilds only what the
remaining stages need)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.errors import ModelFileError
from edgekd.pipeline.layout import (
    PRUNED_SHAPES,
    PRUNED_WEIGHTS,
    STUDENT_WEIGHTS,
    TEACHER_WEIGHTS,
)
from edgekd.recipe import Recipe


@dataclass
class Run:
    """What the stages share: the recipe, the run directory, data, models, and results."""

    recipe: Recipe
    run_dir: Path
    resume: bool = False  # continue training stages from their checkpoints
    progress: bool = True
    log: Callable[[str], None] = print
    stages: dict = field(default_factory=dict)  # stage name -> its report (plain data)
    splits: object = None
    tensors: dict = field(default_factory=dict)
    teacher: object = None
    student: object = None
    report: dict | None = None

    def path(self, name: str) -> Path:
        return self.run_dir / name


def run_splits(run: Run):
    if run.splits is None:
        from edgekd.data.splits import load_splits

        run.splits = load_splits(run.recipe.data, seed=run.recipe.seed)
    return run.splits


def run_tensors(run: Run) -> dict:
    if not run.tensors:
        import torch

        from edgekd.train.loop import to_tensor

        s = run_splits(run)
        run.tensors = {
            "train_x": to_tensor(s.train_x, s.spec.mean, s.spec.std),
            "train_y": torch.from_numpy(s.train_y.astype(np.int64)),
            "val_x": to_tensor(s.val_x, s.spec.mean, s.spec.std),
            "val_y": torch.from_numpy(s.val_y.astype(np.int64)),
        }
    return run.tensors


def build_arch(run: Run, arch: str, arch_args: dict):
    from edgekd.models.zoo import build_model

    spec = run_splits(run).spec
    return build_model(arch, in_channels=spec.channels, num_classes=spec.num_classes, **arch_args)


def load_stage_model(run: Run, arch: str, arch_args: dict, weights: str, shapes: str | None = None):
    """A stage's model from its weights file; `shapes`: the pruned layer shapes to rebuild first."""
    import torch

    from edgekd.io.artifacts import load_weights

    path = run.path(weights)
    if not path.is_file():
        raise ModelFileError(f"'{path}' is missing; the run directory is incomplete, start a new run")
    # the initial weights are overwritten: leave the global RNG as it was, so that a resumed
    # run builds the student from the same RNG state as an uninterrupted one
    with torch.random.fork_rng(devices=[]):
        model = build_arch(run, arch, arch_args)
    if shapes is not None:
        from edgekd.models.shapes import rebuild

        try:
            rebuild(model, json.loads(run.path(shapes).read_text()))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read pruned shapes '{run.path(shapes)}': {exc}; start a new run") from exc
    load_weights(model, path)
    return model.eval()


def teacher_of(run: Run):
    if run.teacher is None:
        cfg = run.recipe.teacher
        run.teacher = load_stage_model(run, cfg.arch, cfg.arch_args, TEACHER_WEIGHTS)
    return run.teacher


def student_of(run: Run):
    """The student as the last stage left it: pruned when pruning ran, else distilled."""
    if run.student is None:
        cfg = run.recipe.distill
        if is_pruned(run):
            run.student = load_stage_model(run, cfg.arch, cfg.arch_args, PRUNED_WEIGHTS, shapes=PRUNED_SHAPES)
        else:
            run.student = load_stage_model(run, cfg.arch, cfg.arch_args, STUDENT_WEIGHTS)
    return run.student


def is_pruned(run: Run) -> bool:
    return bool(run.stages.get("prune", {}).get("enabled"))


def student_summary(run: Run) -> dict:
    return run.stages["prune"] if is_pruned(run) else run.stages["distill"]


def input_shape_of(spec) -> tuple[int, int, int]:
    return (spec.channels, spec.height, spec.width)


def model_summary(run: Run, model, arch: str) -> dict:
    from edgekd.models.cost import count_macs, count_params

    return {"arch": arch, "params": count_params(model), "macs": count_macs(model, input_shape_of(run_splits(run).spec))}


def fit_summary(fit_result) -> dict:
    return {
        "epochs": fit_result.epochs,
        "best_epoch": fit_result.best_epoch,
        "train_seconds": round(fit_result.seconds, 3),
        "images_per_second": round(fit_result.images_per_second, 1),
    }
