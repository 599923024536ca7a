"""ARCHITECTURES: the registry of architectures by name, apart from the zoo that fills it, so
that a family registering itself (models/family.py) does not import the zoo.
edgekd.models.zoo re-exports it: `from edgekd.models.zoo import ARCHITECTURES` keeps working."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgekd.registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")
