"""edgekd.train.labels: the cross-entropy of a batch with unlabeled images (label -1)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from edgekd.train.labels import labeled_cross_entropy, labeled_part


def test_labeled_cross_entropy_sums_the_labeled_images_over_the_batch_size():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0], [1.0, 1.0]])
    labels = torch.tensor([0, -1, 1, -1])
    by_hand = (F.cross_entropy(logits[0:1], labels[0:1]) + F.cross_entropy(logits[2:3], labels[2:3])) / 4
    assert math.isclose(float(labeled_cross_entropy(logits, labels)), float(by_hand), rel_tol=1e-6)
    full = torch.tensor([0, 1, 1, 0])
    assert math.isclose(float(labeled_cross_entropy(logits, full)), float(F.cross_entropy(logits, full)), rel_tol=1e-6)


def test_a_batch_without_labels_gives_zero_not_nan():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = labeled_cross_entropy(logits, torch.full((3,), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros(3, 4))


def test_labeled_part_of_tensors_and_of_a_streamed_source():
    import numpy as np

    from edgekd.data.stream import ArraySource

    x, y = torch.arange(5.0).view(5, 1, 1, 1), torch.tensor([0, -1, 1, -1, 2])
    part_x, part_y = labeled_part(x, y)
    assert part_x.flatten().tolist() == [0.0, 2.0, 4.0] and part_y.tolist() == [0, 1, 2]
    assert labeled_part(x, torch.tensor([0, 1, 1, 0, 2]))[0] is x  # all labeled: the inputs themselves
    source = ArraySource(np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1), y.numpy(), (0.0,), (1.0,))
    part, labels = labeled_part(source, source.labels)
    assert len(part) == 3 and labels.tolist() == [0, 1, 2] and part.x.flatten().tolist() == [0, 2, 4]
