"""A teacher that exists only as ONNX (a vendor's model, or one exported long ago): its
logits come from ONNX Runtime, so it serves offline response KD (Hinton's loss, cached
logits or one run per augmented batch). It has no layers to hook and no gradients, so
feature and relation terms (distill.terms) cannot use it: `check_usable` says so.

It is an nn.Module only so that the distillation code can treat it like any teacher.
Inputs arrive normalized with the data's mean/std; when the model's edgekd metadata names
another normalization, they are converted to it first (raw pixel = x * std + mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.errors import ConfigError, ModelFileError


class OnnxTeacher(nn.Module):
    """Logits of an ONNX classifier through ONNX Runtime, as a frozen torch module."""

    def __init__(self, path: str | Path, *, data_mean, data_std, provider: str = "cpu"):
        super().__init__()
        from edgekd.runtime.inputs import meta_json
        from edgekd.runtime.session import make_session

        self.path = self.onnx_path = str(path)
        self.session = make_session(path, provider)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"teacher.onnx '{path}' has {len(inputs)} inputs; a classifier with one image "
                                 "input is needed")
        self.input = inputs[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        mean, std = meta_json(meta, "edgekd.mean"), meta_json(meta, "edgekd.std")
        self.register_buffer("_scale", torch.ones(1))  # placeholder so .to()/.eval() behave like a module
        self.convert = None
        if mean is not None and std is not None and (list(mean), list(std)) != (list(data_mean), list(data_std)):
            # x_teacher = (x * data_std + data_mean - mean) / std, per channel
            shape = (1, -1, 1, 1)
            d_mean, d_std = (torch.tensor(v, dtype=torch.float32).view(shape) for v in (data_mean, data_std))
            t_mean, t_std = (torch.tensor(v, dtype=torch.float32).view(shape) for v in (mean, std))
            self.convert = (d_std / t_std, (d_mean - t_mean) / t_std)

    def check_input(self, input_shape: tuple) -> None:
        """The model must take the data's (C, H, W); a fixed batch size is not supported."""
        dims = list(self.input.shape)
        fixed = [d if isinstance(d, int) else None for d in dims[1:]]
        if len(dims) != 4 or any(f is not None and f != s for f, s in zip(fixed, input_shape)):
            raise ConfigError(f"teacher.onnx '{self.path}' takes input {dims}, the data is "
                              f"{['N', *input_shape]}; export the teacher for this input size and channels")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if self.convert is not None:
            scale, shift = self.convert
            x = x * scale + shift
        (logits,) = self.session.run(None, {self.input.name: np.ascontiguousarray(x.cpu().numpy())})[:1]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(x.device)


def check_usable(terms: list, where: str = "distill.terms") -> None:
    """Feature and relation terms read the teacher's layers, which an ONNX teacher does not expose."""
    if terms:
        kinds = ", ".join(sorted({t["kind"] for t in terms}))
        raise ConfigError(f"{where} ({kinds}) read the teacher's layers, and an ONNX teacher (teacher.onnx) has "
                          "none to read; remove distill.terms or give the teacher as PyTorch weights")
