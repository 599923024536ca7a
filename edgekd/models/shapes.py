"""Layer shapes as plain data: what a pruned model's layers look like (`layer_shapes`), and
resizing a freshly built architecture to them (`rebuild`) so that pruned weights load
without pickled modules."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import ConfigError


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """Plain-data description of every resizable layer (JSON-serializable)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "Linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"type": "BatchNorm2d", "features": m.num_features}
    return shapes


def rebuild(model: nn.Module, shapes: dict[str, dict]) -> nn.Module:
    """Resize a freshly built `model` (same architecture) to the pruned `shapes`, in place;
    load the pruned weights afterwards with artifacts.load_weights."""
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        m = modules.get(name)
        if m is None or type(m).__name__ != shape.get("type"):
            raise ConfigError(f"pruned shapes do not fit the architecture: layer '{name}' is "
                              f"{type(m).__name__ if m is not None else 'missing'}, expected {shape.get('type')}")
        if isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels, m.groups = shape["in"], shape["out"], shape["groups"]
            _resize(m, "weight", (m.out_channels, m.in_channels // m.groups, *m.kernel_size))
            _resize(m, "bias", (m.out_channels,))
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = shape["in"], shape["out"]
            _resize(m, "weight", (m.out_features, m.in_features))
            _resize(m, "bias", (m.out_features,))
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features = shape["features"]
            for attr in ("weight", "bias", "running_mean", "running_var"):
                _resize(m, attr, (m.num_features,))
    return model


def _resize(module: nn.Module, attr: str, shape: tuple) -> None:
    current = getattr(module, attr, None)
    if current is None:
        return
    replacement = torch.zeros(shape, dtype=current.dtype)
    if isinstance(current, nn.Parameter):
        setattr(module, attr, nn.Parameter(replacement, requires_grad=current.requires_grad))
    else:
        module.register_buffer(attr, replacement)


def layer_in(message: str, modules: dict) -> str | None:
    """The first module name that appears in an error message, to point the user at it."""
    for name in sorted(modules, key=len, reverse=True):
        if name and name in message:
            return name
    return None

