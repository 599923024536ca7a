"""What the chain hands from stage to stage: the data splits, their tensors and the models,
kept in memory when a stage made them in this process and loaded lazily from the run
directory otherwise, so a resumed run rebuilds only what the remaining stages need."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from edgekd.errors import ModelFileError
from edgekd.pipeline.context import Context, build_arch
from edgekd.pipeline.layout import (
    EXTRA_TEACHER_WEIGHTS,
    PRUNED_SHAPES,
    PRUNED_WEIGHTS,
    STUDENT_WEIGHTS,
    TEACHER_WEIGHTS,
)
from edgekd.recipe import Recipe

if TYPE_CHECKING:
    from edgekd.train.plumbing import TrainData


class RunStore:
    """Lazily loaded data and models of one run. `records` are the stages' records so far."""

    def __init__(self, recipe: Recipe, ctx: Context, records: dict):
        self.recipe, self.ctx, self.records = recipe, ctx, records
        self._splits = None
        self._tensors = None
        self._models: dict = {}

    def splits(self):
        if self._splits is None:
            from edgekd.data.splits import load_splits

            self._splits = load_splits(self.recipe.data, seed=self.recipe.seed)
        return self._splits

    def tensors(self) -> TrainData:
        """The train and val splits (edgekd.train.plumbing.TrainData): normalized float tensors
        (small data), or sources that decode or normalize per batch when the splits are streamed
        (edgekd.data.stream). Either goes wherever the training loop takes images."""
        if self._tensors is None:
            import torch

            from edgekd.train.plumbing import TrainData
            from edgekd.train.tensors import to_tensor

            s = self.splits()
            if s.stream is not None:
                from edgekd.data.stream import sources

                self._tensors = TrainData(*sources(s))
                return self._tensors
            self._tensors = TrainData.of(
                to_tensor(s.train_x, s.spec.mean, s.spec.std), torch.from_numpy(s.train_y.astype(np.int64)),
                to_tensor(s.val_x, s.spec.mean, s.spec.std), torch.from_numpy(s.val_y.astype(np.int64)),
            )
        return self._tensors

    def labeled_tensors(self, repeated: bool = False) -> TrainData:
        """tensors() with the train split cut to its labeled images (edgekd.data.unlabeled),
        repeated in turn to the train split's size with `repeated` (what the teacher learns
        from: an epoch as long as every other stage's); the same object when every image has
        its label."""
        from edgekd.train.labels import labeled_part, labeled_repeated

        t = self.tensors()
        train_x, train_y = (labeled_repeated if repeated else labeled_part)(t.train_x, t.train_y)
        return t if train_y is t.train_y else t.with_train(train_x, train_y)

    def update(self, artifacts: dict) -> None:
        self._models.update(artifacts)

    def teacher(self):
        if "teacher" not in self._models:
            cfg = self.recipe.teacher
            if cfg.onnx is not None:  # a teacher that exists only as ONNX (edgekd.distill.onnx_teacher)
                from edgekd.distill.onnx_teacher import open_teacher

                self._models["teacher"] = open_teacher(cfg.onnx, self.splits().spec)
            else:
                self._models["teacher"] = self._load(cfg.arch, cfg.arch_args, TEACHER_WEIGHTS)
        return self._models["teacher"]

    def extra_teachers(self) -> list:
        """distill.extra_teachers (multi-teacher KD), from their weights files."""
        from edgekd.distill.config import extra_teacher_configs

        return [self._load(cfg.arch, cfg.arch_args, EXTRA_TEACHER_WEIGHTS.format(i))
                for i, cfg in enumerate(extra_teacher_configs(self.recipe.distill), start=1)]

    def student(self):
        """The student as the last stage left it: pruned when pruning ran, else distilled."""
        if "student" not in self._models:
            from edgekd.search.stage import student_arch  # distill.arch auto: the student the search chose

            arch, arch_args = student_arch(self.recipe.distill, self.records.get("distill"))
            if self.pruned():
                self._models["student"] = self._load(arch, arch_args, PRUNED_WEIGHTS, shapes=PRUNED_SHAPES)
            else:
                self._models["student"] = self._load(arch, arch_args, STUDENT_WEIGHTS)
        return self._models["student"]

    def pruned(self) -> bool:
        return bool(self.records.get("prune", {}).get("enabled"))

    def student_record(self) -> dict:
        return self.records["prune"] if self.pruned() else self.records["distill"]

    def _load(self, arch: str, arch_args: dict, weights: str, shapes: str | None = None):
        """A stage's model from its weights file; `shapes`: the pruned layer shapes to rebuild first."""
        import torch

        from edgekd.io.artifacts import load_weights

        path = self.ctx.path(weights)
        if not path.is_file():
            raise ModelFileError(f"'{path}' is missing; the run directory is incomplete, start a new run")
        # the initial weights are overwritten: leave the global RNG as it was, so that a resumed
        # run builds the student from the same RNG state as an uninterrupted one
        with torch.random.fork_rng(devices=[]):
            model = build_arch(self.splits().spec, arch, arch_args)
        if shapes is not None:
            from edgekd.models.blocks import deployed
            from edgekd.models.shapes import rebuild

            model = deployed(model)  # pruning saw RepConv branches fused (stages/prune.py)
            try:
                rebuild(model, json.loads(self.ctx.path(shapes).read_text()))
            except (OSError, ValueError) as exc:
                raise ModelFileError(f"cannot read pruned shapes '{self.ctx.path(shapes)}': {exc}; "
                                     "start a new run") from exc
        load_weights(model, path)
        return model.eval()
