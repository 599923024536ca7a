"""Training a prepare_qat() model: first activation ranges from images (calibrate), then KD
fine-tuning with the ranges observed for the first part of the steps and frozen after (qat)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekd.quant.qat.prepare import activation_quantizers, set_observing
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """First activation ranges: the moving-average min/max over `images` (train mode, no grad)."""
    was_training = model.training
    model.train()
    set_observing(model, True)
    for i in range(0, len(images), batch_size):
        model(images[i : i + batch_size])
    model.train(was_training)


@dataclass
class QatResult:
    fit: object  # train.FitResult
    observe_steps: int
    total_steps: int
    val_top1: float
    activation_quantizers: int
    seconds: float = 0.0
    ranges: list = field(default_factory=list)  # [(scale, zero_point)] per activation quantizer


def qat(qmodel: nn.Module, teacher: nn.Module, data: TrainData, cfg, run: RunOptions = DEFAULT_RUN, *,
        temperature: float, alpha: float, calib_images: torch.Tensor) -> QatResult:
    """KD fine-tuning of a prepare_qat() model in place, with edgekd's training loop.

    `cfg` is a recipe.QatConfig (epochs, lr, ... and observe_fraction: the share of steps
    during which the activation ranges keep following a moving average; frozen after).
    The loss is distill.kd_step's Hinton KD with the distill stage's temperature and alpha;
    `run` as in train.fit, named "qat"."""
    import math

    from edgekd.distill.config import DistillConfig
    from edgekd.distill.offline import kd_step
    from edgekd.models.inference import frozen
    from edgekd.train.evaluate import accuracy, predict
    from edgekd.train.loop import fit

    start = time.perf_counter()
    calibrate(qmodel, calib_images)
    cached = None if cfg.augment else predict(teacher, data.train_x)
    total_steps = cfg.epochs * max(1, math.ceil(len(data.train) / cfg.batch_size))
    observe_steps = int(round(cfg.observe_fraction * total_steps))
    steps = [0]

    kd = kd_step(qmodel, teacher, DistillConfig(temperature=temperature, alpha=alpha), cached)

    def step(images, labels, index):
        if steps[0] == observe_steps:
            set_observing(qmodel, False)
        steps[0] += 1
        return kd(images, labels, index)

    if observe_steps == 0:
        set_observing(qmodel, False)
    with frozen([teacher]):  # given back as it was: the teacher may be a model that trains later
        result = fit(qmodel, step, data, cfg, run.with_(desc="qat"))
    set_observing(qmodel, False)  # fit restored the best epoch's buffers; never observe again
    qmodel.eval()
    quantizers = activation_quantizers(qmodel)
    return QatResult(fit=result, observe_steps=observe_steps, total_steps=total_steps,
                     val_top1=accuracy(qmodel, data.val), activation_quantizers=len(quantizers),
                     seconds=time.perf_counter() - start,
                     ranges=[(float(q.scale), int(q.zero_point)) for q in quantizers])
