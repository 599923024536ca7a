"""compute.recompute_batch_norm: the training loop recomputes batch-norm statistics after each
epoch for models from torchvision/timm (auto), for every model (true) or never (false)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.adapt import ATTRIBUTE, built_externally
from edgekd.models.bn import recalibrate_batch_norm
from edgekd.models.zoo import build_model
from edgekd.train.compute import Compute, use
from edgekd.train.config import ComputeConfig, TrainConfig
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData

CFG = TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=False)


def bn_net(external: bool) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    if external:
        setattr(model, ATTRIBUTE, [])  # what build_model leaves on a torchvision/timm model
    return model


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 6, 6, generator=g) * 3 + 2
    y = (x.mean(dim=(1, 2, 3)) > 2).long()
    return {"train_x": x, "train_y": y, "val_x": x[:64], "val_y": y[:64]}


def exact_statistics(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    probe = bn_net(False)
    probe.load_state_dict(model.state_dict())
    recalibrate_batch_norm(probe, [x[i:i + 32] for i in range(0, len(x), 32)])
    return probe[1].running_mean


@pytest.mark.parametrize("setting, external, recomputed", [
    ("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False),
])
def test_the_loop_recomputes_statistics_as_set(data, setting, external, recomputed):
    model = bn_net(external)
    with use(Compute(recompute_batch_norm=setting)):
        result = fit(model, cross_entropy_step(model), TrainData.of(**data), CFG, RunOptions(progress=False))
    assert result.compute["recompute_batch_norm"] is recomputed
    exact = exact_statistics(model, data["train_x"])  # the same images in another order: the same average
    if recomputed:
        torch.testing.assert_close(model[1].running_mean, exact, atol=1e-5, rtol=1e-5)
    else:  # momentum 0.01 over 4 steps: still mostly the initial zeros
        assert not torch.allclose(model[1].running_mean, exact, atol=1e-2)


def test_torchvision_models_are_marked_as_built_externally():
    assert built_externally(build_model("torchvision:shufflenet_v2_x0_5", in_channels=1, num_classes=3,
                                        input_size=(32, 32)))
    assert not built_externally(build_model("resnet8", in_channels=1, num_classes=3))


def test_the_setting_is_validated():
    assert ComputeConfig(recompute_batch_norm=True).recompute_batch_norm is True
    with pytest.raises(ConfigError, match="compute.recompute_batch_norm must be auto, true or false"):
        ComputeConfig(recompute_batch_norm="yes")
