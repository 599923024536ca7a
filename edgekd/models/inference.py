"""A model as it runs for inference: the same function as its eval mode, computed faster.

`inference_copy(model)` is a frozen copy with every RepConv's branches fused into one
convolution (`blocks.deployed`) and every batch norm that follows a convolution folded into
that convolution's weights and bias (traced with torch.fx), as ONNX Runtime does to the
exported graph. The training loop's per-epoch val accuracy and a distillation teacher that
runs at every step use it: they run a model many times between weight changes. Side by side
on 2 cores (benchmarks/results/training-overheads.md): the headline ResNet-20 teacher's forward
1.2x faster, val accuracy of the edgenet rep_ac student 4.2x.

The copy does not follow later changes to the model's weights: make a new one after training.
`deployed_graph` and `fold_batchnorms` are also QAT's first step (edgekd.quant.qat.prepare).
`evaluating` and `frozen` (eval mode, and no gradients: a teacher while it teaches) give each
layer back the mode and flags it had.
"""

from __future__ import annotations

import collections
import contextlib
import copy
from typing import Sequence

import torch
from torch import nn

from edgekd.models.blocks import deployed

__all__ = ["deployed_graph", "evaluating", "frozen", "inference_copy", "fold_batchnorm", "fold_batchnorms", "modes_kept"]


@contextlib.contextmanager
def modes_kept(model: nn.Module):
    """After the block, each of `model`'s modules back in the mode it had (a model may hold some
    layers in eval mode while the rest trains: `model.train(flag)` would set them all alike)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """`model` in eval mode for the block, then each of its modules back in the mode it had."""
    with modes_kept(model):
        model.eval()
        yield model


@contextlib.contextmanager
def frozen(models: Sequence[nn.Module]):
    """The models in eval mode and without gradients for the block, then back in the mode and with
    the requires_grad flags they had."""
    saved = [(m, [p.requires_grad for p in m.parameters()]) for m in models]
    with contextlib.ExitStack() as modes:
        for m in models:
            modes.enter_context(evaluating(m))
            m.requires_grad_(False)
        try:
            yield
        finally:
            for m, flags in saved:
                for p, flag in zip(m.parameters(), flags):
                    p.requires_grad_(flag)


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d equal to bn(conv(x)) with bn in eval mode (running statistics), on conv's device:
    w' = w * g / sqrt(var + eps) per output channel, b' = beta + (b - mean) * g / sqrt(var + eps)."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)  # affine=False: 1 and 0
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight * factor.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded.bias.copy_(beta + (bias - bn.running_mean) * factor)
    return folded


def fold_batchnorms(gm: torch.fx.GraphModule) -> None:
    """Every BatchNorm2d with running statistics whose input is a plain Conv2d's output (used by
    nothing else) folded into that convolution, in place; the graph is recompiled and the unused
    modules dropped. Exact types only: a subclass may compute more than it (timm's BatchNormAct2d)."""
    modules = dict(gm.named_modules())
    calls = collections.Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d or calls[node.target] > 1:
            continue
        if modules[node.target].running_var is None:  # normalizes with the batch's statistics even in eval mode
            continue
        conv_node = node.args[0]
        if not (isinstance(conv_node, torch.fx.Node) and conv_node.op == "call_module"
                and type(modules[conv_node.target]) is nn.Conv2d and len(conv_node.users) == 1
                and calls[conv_node.target] == 1):  # a layer run twice would get the fold at both places
            continue
        gm.set_submodule(conv_node.target, fold_batchnorm(modules[conv_node.target], modules[node.target]))
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def deployed_graph(model: nn.Module) -> torch.fx.GraphModule:
    """A torch.fx trace of a copy of `model` as it is deployed (RepConv branches fused), in eval
    mode; `model` itself is left as it is. Raises what fx raises for a model it cannot trace
    (many types, for dynamic control flow). QAT rewrites this graph; inference_copy folds it."""
    return _traced(deployed(model), model)


def _traced(form: nn.Module, model: nn.Module) -> torch.fx.GraphModule:
    """The trace of `form`, model's deployed form (model itself when it has no branches to fuse)."""
    own = copy.deepcopy(model) if form is model else form  # the trace holds its layers: they must be a copy's
    return torch.fx.symbolic_trace(own.eval())


def inference_copy(model: nn.Module) -> nn.Module:
    """`model` in eval mode, RepConv branches fused and batch norms folded into their
    convolutions, as a copy; `model` itself is left as it was (mode included). The folding needs
    a model torch.fx can trace and no forward hooks (a traced copy would drop those of folded
    layers): otherwise only the branches are fused, or, with none, `model` itself is returned,
    which the caller runs in eval mode. The copy's layers may be on the CPU in the standard
    layout: the caller moves it where it computes (edgekd.train.compute.Compute.model)."""
    with evaluating(model):
        form = deployed(model)  # a copy when there are branches to fuse
        if not _foldable(model):
            return form
        try:
            traced = _traced(form, model)
        except Exception:  # fx raises many types for dynamic control flow: run it unfolded
            return form
        fold_batchnorms(traced)
        for parameter in traced.parameters():  # frozen, as the model it copies is at inference
            parameter.requires_grad_(False)
        return traced.eval()


def _foldable(model: nn.Module) -> bool:
    modules = list(model.modules())
    has_hooks = any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    return not has_hooks and any(isinstance(m, nn.BatchNorm2d) for m in modules)
