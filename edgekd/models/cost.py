"""What a model costs: its parameter count and the multiply-accumulates of one forward pass."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models.inference import evaluating


def count_params(model: nn.Module) -> int:
    """Parameters of the model as exported (edgekd.models.blocks.deployed: RepConv branches fused)."""
    from edgekd.models.blocks import deployed

    return sum(p.numel() for p in deployed(model).parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample: torch's FLOP counter
    (torch.utils.flop_counter) halved, since it counts a multiply-add as two FLOPs. It counts
    every matrix op (convolutions of any dimension, transposed ones, linear layers, matmul,
    bmm, attention); batch norm, activations and pooling are not counted, as in the usual
    tables. For Conv2d/Linear models it gives what per-layer hooks on those two gave."""
    from torch.utils.flop_counter import FlopCounterMode

    from edgekd.models.blocks import deployed

    model = deployed(model)  # counted as exported: RepConv branches fused
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops()) // 2
