"""TODO docstring (prune -> prune.importance)"""

from __future__ import annotations

from typing import Callable

from torch import nn

from edgekd.errors import ConfigError
from edgekd.prune.config import PRUNE_IMPORTANCES as IMPORTANCES


def make_importance(name: str):
    import torch_pruning as tp

    factories: dict[str, Callable] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.TaylorImportance,
        "random": tp.importance.RandomImportance,
    }
    if name not in factories:
        raise ConfigError(f"unknown pruning importance '{name}'; available: {', '.join(IMPORTANCES)}")
    return factories[name]()


def default_protected(model: nn.Module) -> list[str]:
    """The first convolution (it sees the raw image) and the last linear layer (its outputs
    are the classes) are never pruned unless the user asks."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return convs[:1] + linears[-1:]
