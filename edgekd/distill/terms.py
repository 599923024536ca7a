"""TODO docstring (kd_losses -> distill.terms)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from edgekd.distill.losses import (
    attention_energy,
    attention_loss_from_energy,
    fitnet_loss,
    rkd_loss,
    sp_loss,
)
from edgekd.errors import ConfigError

PENULTIMATE = None  # a term's layer left unset: the input of the model's classifier (its last nn.Linear)


@dataclass
class Term:
    """One `distill.terms` entry (validated and with defaults filled by recipe.DistillConfig).

    student / teacher: layer names (PENULTIMATE: the classifier's input), paired in order.
    `teacher_targets` maps the teacher's features to what the loss needs, per sample, so
    that it can be cached when inputs are not augmented: AT keeps only the attention maps.
    """

    kind: str
    student: tuple = ()
    teacher: tuple = ()
    weight: float = 1.0
    p: float = 2.0
    distance: float = 25.0
    angle: float = 50.0
    regressors: list = field(default_factory=list)  # fitnet: one per layer pair (None: channels agree)

    @classmethod
    def from_config(cls, raw: dict) -> "Term":
        extra = {k: float(raw[k]) for k in ("weight", "p", "distance", "angle") if k in raw}

        def layers(value):
            return (PENULTIMATE,) if value is None else tuple(value)

        return cls(kind=raw["kind"], student=layers(raw.get("student")), teacher=layers(raw.get("teacher")), **extra)

    def teacher_targets(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.kind == "at":
            return [attention_energy(f, self.p) for f in feats]
        if self.kind in ("rkd", "sp"):
            return [f.flatten(1) for f in feats]
        return list(feats)

    def loss(self, feats: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "fitnet":
            pairs = zip(feats, targets, self.regressors or [None] * len(feats))
            return self.weight * sum(fitnet_loss(s, t, r) for s, t, r in pairs)
        if self.kind == "at":
            return self.weight * sum(attention_loss_from_energy(attention_energy(s, self.p), t)
                                     for s, t in zip(feats, targets))
        if self.kind == "sp":
            return self.weight * sum(sp_loss(s, t) for s, t in zip(feats, targets))
        if self.kind == "rkd":
            return sum(rkd_loss(s, t, distance=self.distance, angle=self.angle) for s, t in zip(feats, targets))
        raise ConfigError(f"unknown distill term kind '{self.kind}'")  # pragma: no cover - the recipe checks


def classifier_name(model: nn.Module) -> str:
    """Name of the model's last nn.Linear: its input is the penultimate feature."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier; name the layers of the term")
    return names[-1]


def check_layer(model: nn.Module, name: str | None, *, what: str) -> None:
    """ConfigError naming `name` and a few valid names when the model has no such module."""
    if name is PENULTIMATE:
        classifier_name(model)
        return
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return
    valid = [n for n in modules if n]
    shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
    raise ConfigError(f"{what}: layer '{name}' not found in {type(model).__name__}; valid names: {shown}")


class Capture:
    """Forward hooks that keep the latest output of named modules (or, for PENULTIMATE,
    the input of the classifier). The output is cloned so that a following in-place
    operation (ReLU(inplace=True)) cannot change it."""

    def __init__(self, model: nn.Module, names: Sequence[str | None]):
        self.names = list(dict.fromkeys(names))  # unique, in order
        self.values: dict = {}
        self.handles = []
        modules = dict(model.named_modules())
        for name in self.names:
            check_layer(model, name, what="distill.terms")
            if name is PENULTIMATE:
                module = modules[classifier_name(model)]
                self.handles.append(module.register_forward_pre_hook(self._keep_input(name)))
            else:
                self.handles.append(modules[name].register_forward_hook(self._keep_output(name)))

    def _keep_output(self, name):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"distill.terms: layer '{name}' does not output a single tensor")
            self.values[name] = output.clone()

        return hook

    def _keep_input(self, name):
        def hook(_module, inputs):
            self.values[name] = inputs[0].clone()

        return hook

    def take(self, names: Sequence[str | None]) -> list[torch.Tensor]:
        return [self.values[n] for n in names]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.values.clear()
