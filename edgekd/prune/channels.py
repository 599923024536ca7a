"""Structured channel pruning that physically removes channels.

Torch-Pruning's dependency graph finds every layer coupled to a channel (residual adds,
concatenations, depthwise and grouped convolutions, batch norms, squeeze-and-excitation
gates) and removes the channel from all of them, so convolution, linear and batch-norm
shapes shrink and with them MACs, parameters and the ONNX file.

Pruned models are saved without pickling modules: the per-layer shapes go to a JSON-able
dict (`layer_shapes`), the weights to safetensors, and `rebuild` resizes a freshly built
architecture to those shapes before the weights are loaded.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgekd.errors import ConfigError, first_line
from edgekd.models.cost import count_macs, count_params
from edgekd.models.shapes import layer_in
from edgekd.prune.importance import default_protected, make_importance, needs_gradients
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData


@dataclass(frozen=True)
class PrunePlan:
    """What prune_channels removes, and how (the fields of the recipe's prune section that say so).

    ratio           the share of the prunable channels removed (all steps together)
    importance      a name in edgekd.prune.importance.IMPORTANCES
    global_pruning  rank channels across layers instead of within each layer
    round_to        channel counts stay multiples of this (None: any count)
    protect         module names kept whole, in addition to default_protected(model)
    steps           the steps `ratio` is removed in
    target_macs     stop at the first step whose model has at most this many MACs (then `ratio`
                    is the most that may be removed, and `steps` the resolution of the search)
    target_params   the same with the parameter count (with both, the first step meeting both)
    """

    ratio: float
    importance: str = "l1"
    global_pruning: bool = False
    round_to: int | None = 8
    protect: tuple = ()
    steps: int = 1
    target_macs: int | None = None
    target_params: int | None = None

    @classmethod
    def of(cls, cfg, **changes) -> PrunePlan:
        """From a PruneConfig (edgekd.prune.config), with `changes` on top."""
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
        fields.update(changes)
        return cls(**{**fields, "protect": tuple(fields["protect"])})


def prune_channels(model: nn.Module, plan: PrunePlan, *, input_shape: tuple[int, int, int],
                   loss_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                   after_step: Callable[[int], None] | None = None,
                   stop: Callable[[int], bool] | None = None) -> nn.Module:
    """Remove `plan.ratio` of the prunable channels from `model` (in place) in `plan.steps`
    steps, stopping early at plan.target_macs / target_params (see PrunePlan).

    loss_batch: (images, labels) for an importance that reads gradients ('taylor').
    after_step(step): called after each step, for fine-tuning between steps.
    stop(step): called after after_step; True ends the pruning (latency targets use it).
    """
    ratio, importance, protect, steps = plan.ratio, plan.importance, plan.protect, plan.steps
    target_macs, target_params = plan.target_macs, plan.target_params
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"prune ratio must be between 0 and 1, got {ratio}")
    scorer = make_importance(importance)  # an unknown name fails here, listing the known ones
    gradients = needs_gradients(importance)
    if gradients and loss_batch is None:
        raise ConfigError(f"importance '{importance}' needs a batch of training images to compute gradients")
    modules = dict(model.named_modules())
    missing = [name for name in protect if name not in modules]
    if missing:
        raise ConfigError(f"prune.protect names unknown layers: {', '.join(missing)}")
    example = torch.zeros(1, *input_shape)
    model.eval()
    # every step first on a copy, so that a graph torch-pruning cannot prune fails before the
    # model is touched (the caller can then go on with the unpruned model)
    trial = copy.deepcopy(model)
    _run_pruner(trial, example, plan, scorer, loss_batch if gradients else None)
    del trial
    pruner = _make_pruner(model, example, plan, scorer)
    for step in range(steps):
        _prune_step(model, pruner, loss_batch if gradients else None)
        if after_step is not None:
            after_step(step + 1)
        macs_met = target_macs is None or count_macs(model, input_shape) <= target_macs
        params_met = target_params is None or count_params(model) <= target_params
        if (target_macs is not None or target_params is not None) and macs_met and params_met:
            break
        if stop is not None and stop(step + 1):
            break
    return model


class PruningFailed(ConfigError):
    """torch-pruning cannot prune this graph (or left it broken); the message names the layer
    or operation and the fix. The model passed to prune_channels is unchanged."""


# torch-pruning's functions where an operation it cannot follow shows up, and what that operation is
_TP_OPERATIONS = {
    "reshape": "a reshape/view that mixes channels (e.g. a channel shuffle)",
    "concat": "a concatenation",
    "split": "a split/chunk of channels",
    "group": "a grouped convolution",
    "expand": "an expand/broadcast",
}


def _failure(exc: Exception, modules: dict, what: str) -> PruningFailed:
    """One line: where torch-pruning failed (the layer, or the kind of operation) and the fix."""
    import traceback

    layer = layer_in(str(exc), modules)
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__) if "torch_pruning" in f.filename]
    operation = next((text for key, text in _TP_OPERATIONS.items() if frames and key in frames[-1].lower()), None)
    where = f" at layer '{layer}'" if layer else f" in {operation} (torch-pruning's {frames[-1]})" if operation \
        else f" in torch-pruning's {frames[-1]}" if frames else ""
    fix = f"protect that layer with prune.protect: ['{layer}']" if layer else \
        "protect the layers around it with prune.protect, or set prune.enabled: false (this architecture is not " \
        "supported by structured pruning as it is)"
    return PruningFailed(f"{what}{where}: {type(exc).__name__}: {first_line(exc)}; {fix}")


def _make_pruner(model, example, plan: PrunePlan, scorer):
    import torch_pruning as tp

    modules = dict(model.named_modules())
    ignored = [modules[name] for name in {*default_protected(model), *plan.protect}]
    try:
        return tp.pruner.MetaPruner(model, example, importance=scorer, global_pruning=plan.global_pruning,
                                    pruning_ratio=plan.ratio, iterative_steps=plan.steps, ignored_layers=ignored,
                                    round_to=plan.round_to)
    except Exception as exc:  # torch-pruning raises plain errors for graphs it cannot trace
        raise _failure(exc, modules, "cannot build the pruning dependency graph") from exc


def _prune_step(model, pruner, loss_batch) -> None:
    if loss_batch is not None:  # an importance that reads gradients
        images, labels = loss_batch
        model.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
    try:
        pruner.step()
    except Exception as exc:
        raise _failure(exc, dict(model.named_modules()), "pruning failed") from exc
    model.zero_grad(set_to_none=True)


def _run_pruner(model, example, plan: PrunePlan, scorer, loss_batch):
    """All the steps on `model` (a copy), then one forward pass: a graph that torch-pruning
    pruned inconsistently fails here, before the real model is touched. `loss_batch`: None
    unless the importance reads gradients."""
    pruner = _make_pruner(model, example, plan, scorer)
    for _ in range(plan.steps):
        _prune_step(model, pruner, loss_batch)
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:
        raise _failure(exc, dict(model.named_modules()), "the pruned model no longer runs") from exc


def sparsity_train(model: nn.Module, data: TrainData, cfg, run: RunOptions = DEFAULT_RUN, *, penalty: float):
    """Network slimming (Liu et al. 2017): train with cross-entropy plus `penalty` times the
    L1 norm of every batch-norm scale, so that the channels the model can do without end
    with scales near zero and importance 'bn_scale' removes them first. `cfg`: a
    TrainConfig (epochs, lr, ...); `run` as in train.fit, named "sparsity". Returns train.fit's FitResult."""
    from edgekd.train.loop import cross_entropy_step, fit

    scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.weight is not None]
    if not scales:
        raise ConfigError("prune.sparsity needs batch-norm layers: the model has none")
    base = cross_entropy_step(model)

    def step(images, labels, index):
        loss, logits = base(images, labels, index)
        return loss + penalty * sum(s.abs().sum() for s in scales), logits

    return fit(model, step, data, cfg, run.with_(desc="sparsity"))


def channel_table(model: nn.Module) -> dict[str, int]:
    """Output channels (or features) of every conv and linear layer, by module name."""
    table = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            table[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            table[name] = m.out_features
    return table
