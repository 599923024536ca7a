"""The memory a model's forward pass holds, measured on a small input and scaled to a large one,
so that a forward at the large size (an export at `--input-size 4096,4096`) is refused before it
allocates what the machine does not have.

The measure: one forward at batch 1 on a size the model is known to take, under a
TorchDispatchMode that sees every tensor an operator makes and, through a weakref finalizer,
when it is freed; the peak of the bytes alive together is split into spatial tensors (3 or
more dims: they grow with the pixels) and the rest (pooled features, logits: they do not).
Scaled by the pixel ratio and the batch, it over-estimates torchvision's resnets, mobilenet and
densenet by 5% to 60% (never under): what a refusal needs.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from edgekd.models.inference import evaluating


class _PeakBytes(TorchDispatchMode):
    """Live and peak bytes of the tensors made under it: [spatial, other]."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.refs = [0, 0], [0, 0], {}

    def _free(self, key, kind: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live[kind] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes, kind = storage.data_ptr(), storage.nbytes(), 0 if t.dim() >= 3 else 1
                if key not in self.refs:  # a view or an in-place result shares its storage: counted once
                    self.refs[key] = 0
                    self.live[kind] += nbytes
                    self.peak[kind] = max(self.peak[kind], self.live[kind])
                self.refs[key] += 1
                weakref.finalize(t, self._free, key, kind, nbytes)
        return out


def forward_peak(model: torch.nn.Module, input_shape) -> tuple[int, int]:
    """(spatial, other) peak bytes of one eval-mode forward of `model` on one zero sample of
    `input_shape` (C, H, W)."""
    with evaluating(model), torch.no_grad(), _PeakBytes() as seen:
        model(torch.zeros(1, *input_shape))
    return seen.peak[0], seen.peak[1]


def forward_bytes(model: torch.nn.Module, input_shape, probe_shape, batch: int) -> int:
    """What a forward of `batch` samples of `input_shape` (C, H, W) holds, input included,
    estimated from one forward at `probe_shape` (a size the model takes; cheap when small)."""
    spatial, other = forward_peak(model, probe_shape)
    ratio = (int(input_shape[1]) * int(input_shape[2])) / (int(probe_shape[1]) * int(probe_shape[2]))
    sample_input = 4 * int(input_shape[0]) * int(input_shape[1]) * int(input_shape[2])
    return int(batch * (spatial * ratio + other + sample_input))
