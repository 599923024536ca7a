"""Where the training loop's batches come from.

A *source* is anything with `__len__` (samples), `labels` and
`batches(batch_size, generator, augment) -> iterator of (images, labels, index)`, where
`index` holds the samples' positions (for per-sample data such as cached teacher logits).
Every random choice (order, augmentation) draws from `generator`, so a checkpoint of its
state resumes the data exactly.

InMemory is the small-data fast path: one normalized tensor, batches sliced from it and
augmented as whole batches (no per-sample Python, no worker processes). Streaming sources
(edgekd.data: files decoded, resized and augmented per sample by DataLoader workers) follow
the same protocol.
"""

from __future__ import annotations

from typing import Iterator

import torch

from edgekd.train.augment import augment_batch


class InMemory:
    """Images (normalized float NCHW) and labels held as tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, generator: torch.Generator, augment: bool
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=generator)
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            if len(index) < 2:  # batch norm cannot train on one sample
                continue
            images = self.x[index]
            if augment:
                images = augment_batch(images, generator)
            yield images, self.labels[index], index

    def images(self, batch_size: int = 1024) -> Iterator[torch.Tensor]:
        """Every image once, in order (predictions, accuracy)."""
        for i in range(0, len(self.x), batch_size):
            yield self.x[i : i + batch_size]


def as_source(x, y=None):
    """A source from tensors (the in-memory path), or the source itself."""
    return InMemory(x, y) if isinstance(x, torch.Tensor) else x
