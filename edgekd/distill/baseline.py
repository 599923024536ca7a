"""The student trained alone: what distillation is measured against (distill.baseline).

The same architecture from the same initial weights, trained by the same loop with the same
schedule, seed, augmentation and number of optimizer steps as the distilled student, on
cross-entropy alone. Without labels it cannot use unlabeled images, so it trains on the
labeled ones, repeated in turn to as many images per epoch as the distilled student's train
split holds: every epoch has as many steps as the distilled student's (edgekd.data.unlabeled).
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.train.labels import labeled_repeated
from edgekd.train.loop import FitResult, cross_entropy_step, fit
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData


def optimizer_steps(images: int, batch_size: int, epochs: int) -> int:
    """The training loop's optimizer steps: a batch of one image is skipped (batch norm)."""
    full, rest = divmod(images, batch_size)
    return epochs * (full + (1 if rest >= 2 else 0))


def train_alone(student: nn.Module, data: TrainData, cfg, run: RunOptions = DEFAULT_RUN) -> FitResult:
    """Train `student` in place on cross-entropy only, as the distilled student was scheduled
    (cfg: the distill section); `run` as in train.fit, named "distill"."""
    alone = data.with_train(*labeled_repeated(data.train_x, data.train_y))
    with torch.random.fork_rng(devices=[]):  # the chain's RNG continues as if there were no baseline
        return fit(student, cross_entropy_step(student), alone, cfg, run.with_(desc="distill"))
