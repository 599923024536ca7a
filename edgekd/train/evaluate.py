"""Evaluation of a model being trained: logits and top-1 accuracy, computed as the run
computes (edgekd.train.compute: device, precision, layout), of a tensor or a source
(edgekd.train.batches)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from edgekd.models.inference import evaluating, inference_copy
from edgekd.train.batches import as_source
from edgekd.train.compute import current

# Images per forward pass: on 2 CPU cores, 256 runs a ResNet-20 over 6,000 images 1.35x faster than
# 1,024 (activations that stay in cache), bit for bit the same logits (benchmarks/training_overheads.py)
EVAL_BATCH = 256


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = EVAL_BATCH, *, full_precision: bool = False) -> torch.Tensor:
    """Logits for every image of x (a tensor or a source, edgekd.train.batches), in eval
    mode, batched, computed as the run computes (edgekd.train.compute: device, precision,
    layout; full_precision: in fp32 whatever the run's precision, as the exported model
    computes), by `model`'s inference copy (edgekd.models.inference: RepConv branches fused,
    batch norms folded); returned as float32 on the CPU."""
    compute = current()
    if full_precision:
        compute = dataclasses.replace(compute, precision="fp32")
    parts = []
    with evaluating(model), compute.borrowed(model):
        runner = compute.model(inference_copy(model))  # the same function, batch norms folded: faster
        for images in as_source(x).images(batch_size):
            with compute.autocast():
                parts.append(runner(compute.batch(images)).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def accuracy(model: nn.Module, x, y: torch.Tensor | None = None) -> float:
    """Top-1 in percent (computed in fp32), of a tensor and its labels or of a source."""
    source = as_source(x, y)
    if len(source) == 0:
        return float("nan")
    # in fp32: accuracy picks the best epoch and is reported; the deployed model computes in fp32
    return float((predict(model, source, full_precision=True).argmax(1) == source.labels).float().mean() * 100)
