"""The one image normalizer: uint8 pixels -> float32 (x/255 - mean) / std per channel.

Training (edgekd.train.tensors.to_tensor) and ONNX evaluation (edgekd.runtime.inputs.preprocess)
both call it, so a model sees the same floats in both. numpy only: no torch.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def normalize(x_uint8: np.ndarray, mean: ArrayLike | None = None, std: ArrayLike | None = None,
              scale: float | None = None) -> np.ndarray:
    """(x/255 - mean) / std along axis 1 (channels), in float32, as a new C-contiguous array.

    mean and std hold one value per channel, or one for all; None skips that step. scale:
    x * scale instead of x/255 (a model trained on other pixel ranges; None: x/255, which is
    a division, as torchvision's ToTensor, not a multiplication by 1/255). Each operation is
    one float32 rounding, in this order, so the result is bit-for-bit the same wherever it is
    computed.
    """
    x = np.array(x_uint8, dtype=np.float32, order="C")  # always a copy: the steps below work in place
    if scale is None:
        np.divide(x, np.float32(255.0), out=x)
    elif scale != 1:
        np.multiply(x, np.float32(scale), out=x)
    for values, op in ((mean, np.subtract), (std, np.divide)):
        if values is not None:
            op(x, channel_values(values, x.ndim), out=x)
    return x


def channel_values(values: ArrayLike, ndim: int) -> np.ndarray:
    """Per-channel values as float32, shaped (1, C, 1, ...) to broadcast over ndim-dim images."""
    return np.asarray(values, dtype=np.float32).reshape(1, -1, *([1] * (ndim - 2)))
