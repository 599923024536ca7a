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


def labeled_repeated(train_x, train_y: torch.Tensor):
    """The labeled images and labels, repeated in turn up to len(train_y) images (the inputs
    themselves when every image is labeled): what trains on labels alone when labels are
    scarce (the teacher, the student alone), so that its epoch has as many steps as the train
    split's and `epochs` means the same in every stage, with val checked once per such epoch."""
    labeled_x, labeled_y = labeled_part(train_x, train_y)
    if len(labeled_y) == len(train_y):
        return train_x, train_y
    picks = torch.arange(len(train_y)) % len(labeled_y)
    if isinstance(labeled_x, torch.Tensor):
        return labeled_x[picks], labeled_y[picks]
    part = labeled_x.take(picks.numpy())  # a streamed source of arrays
    return part, part.labels
