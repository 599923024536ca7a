"""normalize()'s arithmetic as a torch tensor: the images the training loop and PyTorch
evaluation take. Beside edgekd.data.normalize, which stays numpy-only (the ONNX bench runs
without torch)."""

from __future__ import annotations

import numpy as np
import torch

from edgekd.data.normalize import normalize


def to_tensor(images_uint8: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NCHW -> float32 normalized: edgekd.data.normalize, the ONNX bench's arithmetic too."""
    # plain NCHW: the training loop puts each batch in the run's layout (edgekd.train.compute)
    return torch.from_numpy(normalize(images_uint8, mean, std))
