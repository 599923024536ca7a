"""Training with images that have no label (edgekd.data.unlabeled: label UNLABELED, -1).

Every loss term on labels goes through `labeled_cross_entropy`: the cross-entropy of the
labeled images, summed and divided by the whole batch, so that each image of a batch weighs
the same, an unlabeled one contributing only to the terms without labels (KD, features), and
a batch without any label gives 0 instead of the NaN of an empty mean. With every image
labeled it is the usual batch mean.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from edgekd.data.unlabeled import UNLABELED


def labeled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled images, divided by the batch size (see the module docstring)."""
    total = F.cross_entropy(logits, labels, ignore_index=UNLABELED, reduction="sum")
    return total / max(1, len(labels))


def labeled_part(train_x, train_y: torch.Tensor):
    """(images, labels) of the labeled images only: a tensor indexed, or a source's `take`;
    the inputs themselves when every image has its label."""
    keep = torch.nonzero(train_y != UNLABELED).flatten()
    if len(keep) == len(train_y):
        return train_x, train_y
    if isinstance(train_x, torch.Tensor):
        return train_x[keep], train_y[keep]
    part = train_x.take(keep.numpy())
    return part, part.labels
