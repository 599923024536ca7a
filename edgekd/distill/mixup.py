"""Function matching (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient
and consistent"): the student matches the teacher on images between the training images.
Each batch is mixed with a shuffled copy of itself, x' = s*x + (1 - s)*x[order] with
s ~ Beta(a, a) (mixup, Zhang et al. 2018), and teacher and student both see x'.

The KD and feature terms need no labels; the cross-entropy term, where alpha < 1, becomes
s*CE(y) + (1 - s)*CE(y[order]) (`Mix.loss`). The draws come from the global torch RNG,
which the training checkpoints keep, so a resumed run mixes as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: its labels, the labels of the images mixed in (None: not mixed)
    and the share `s` of the batch's own images."""

    labels: torch.Tensor
    other: torch.Tensor | None = None
    share: float = 1.0

    def loss(self, loss_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A loss on labels, `loss_of(labels)`, for the mixed images: the two labels' losses by their shares."""
        if self.other is None:
            return loss_of(self.labels)
        return self.share * loss_of(self.labels) + (1.0 - self.share) * loss_of(self.other)


def mixed_batch(images: torch.Tensor, labels: torch.Tensor, concentration: float) -> tuple[torch.Tensor, Mix]:
    """The batch mixed with a shuffled copy of itself (concentration a > 0), or as it is (0)."""
    if concentration == 0:
        return images, Mix(labels)
    a = torch.tensor(float(concentration))
    share = float(torch.distributions.Beta(a, a).sample())
    order = torch.randperm(len(images)).to(images.device)
    return share * images + (1.0 - share) * images[order], Mix(labels, labels[order], share)
