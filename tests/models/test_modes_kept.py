"""Functions that run a model in another mode give each layer back its own mode: a model may hold
some layers in eval mode while the rest trains (model.train(flag) would set them all alike)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.models.activations import forward_peak
from edgekd.models.bn import recalibrate_batch_norm
from edgekd.models.cost import count_macs


def mixed() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()
    model[3].eval()  # dropout held off while the rest trains
    return model


@pytest.mark.parametrize("run", [
    lambda m: count_macs(m, (1, 8, 8)),
    lambda m: forward_peak(m, (1, 8, 8)),
    lambda m: recalibrate_batch_norm(m, [torch.randn(4, 1, 8, 8)]),
], ids=["count_macs", "forward_peak", "recalibrate_batch_norm"])
def test_each_layer_comes_back_in_its_own_mode(run):
    model = mixed()
    before = [m.training for m in model.modules()]
    run(model)
    assert [m.training for m in model.modules()] == before
    assert model.training and not model[3].training


def test_frozen_gives_back_modes_and_gradient_flags_even_when_the_block_fails():
    from edgekd.models.inference import frozen

    model = mixed()
    model[0].bias.requires_grad_(False)  # one flag off before: it stays off after
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"), frozen([model]):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
