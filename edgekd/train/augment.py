"""Batch augmentation for training: random crop after padding and random horizontal flip,
done on a whole batch at once (no per-sample Python), with every draw from the caller's
generator so that a checkpoint of its state resumes the same augmentation."""

from __future__ import annotations

import torch
from torch import nn


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after padding by `pad`, and random horizontal flip, per sample.

    Padding replicates the border, so a black background stays black after normalization.
    The draws come from `generator` (on the CPU); x may be on any device.
    """
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (torch.arange(h).view(1, h) + dy.view(n, 1)).view(n, 1, h, 1).expand(n, c, h, w).to(x.device)
    cols = (torch.arange(w).view(1, w) + dx.view(n, 1)).view(n, 1, 1, w).expand(n, c, h, w).to(x.device)
    cropped = _crop(padded, rows, cols)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    cropped[flip] = cropped[flip].flip(3)
    return cropped


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c, h, w = rows.shape
    wp = padded.shape[3]
    picked_rows = padded.gather(2, rows[..., :1].expand(n, c, h, wp))  # (n, c, h, wp)
    return picked_rows.gather(3, cols)
