"""torchvision classifiers adapted to small inputs (edgekd.models.adapt): a stride-1 stem and
no early max-pool below 64 px, what was changed recorded on the model, ONNX export intact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekd.models.adapt import SMALL_INPUT, adapt_to_input, adaptations
from edgekd.models.zoo import build_model

FIVE = ("mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5", "densenet121")


def last_conv_map(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """The spatial size of the last convolution's output: the feature map the head pools."""
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape[2:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes[-1]


@pytest.mark.parametrize("name", FIVE)
def test_the_five_students_work_at_28x28(name):
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", in_channels=1, num_classes=10, input_size=(28, 28))
    changes = adaptations(model)
    assert changes and changes[0].endswith(": stride 2 -> 1"), changes
    images = torch.randn(2, 1, 28, 28)
    height, width = last_conv_map(model.eval(), images)
    assert height >= 2 and width >= 2  # the stems no longer shrink 28x28 to nothing
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 10)
    assert model.train()(images).shape == (2, 10)  # batch norm in training mode too


def test_densenet121_at_28_no_longer_fails():
    model = build_model("torchvision:densenet121", in_channels=1, num_classes=10, input_size=(28, 28)).eval()
    assert adaptations(model) == ["features.conv0: stride 2 -> 1", "features.pool0: MaxPool2d removed"]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_resnet_stem_stride_1_and_no_maxpool():
    model = build_model("torchvision:resnet18", in_channels=1, num_classes=7, input_size=(32, 32))
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert model.conv1.weight.shape == (64, 1, 7, 7)  # the weights' shapes are unchanged
    assert adaptations(model) == ["conv1: stride 2 -> 1", "maxpool: MaxPool2d removed"]
    assert model.edgekd_adapted == adaptations(model)  # the attribute behind it
    assert adaptations(copy.deepcopy(model)) == adaptations(model)


@pytest.mark.parametrize("input_size", [None, (SMALL_INPUT, SMALL_INPUT), (224, 224), (64, 300)])
def test_large_or_unknown_inputs_keep_the_model_as_it_comes(input_size):
    model = build_model("torchvision:resnet18", in_channels=3, num_classes=5, input_size=input_size)
    assert model.conv1.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d)
    assert adaptations(model) == []


def test_slow_batch_norm_momentum_is_raised_for_data_whatever_the_size():
    """MobileNetV3's 0.01 leaves the running statistics at their initial values after a short
    schedule (one class predicted in eval mode); a model built for data gets 0.1."""
    model = build_model("torchvision:mobilenet_v3_small", in_channels=3, num_classes=5, input_size=(64, 64))
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}
    assert adaptations(model) == ["batch-norm momentum 0.01 -> 0.1 (34 layers)"]
    plain = build_model("torchvision:mobilenet_v3_small", in_channels=3, num_classes=5)
    assert {m.momentum for m in plain.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_the_smaller_side_decides():
    model = build_model("torchvision:mobilenet_v2", in_channels=3, num_classes=5, input_size=(200, 40))
    assert adaptations(model) == ["features.0.0: stride 2 -> 1"]


def test_zoo_architectures_are_not_touched():
    model = build_model("resnet8", in_channels=1, num_classes=10, input_size=(28, 28))
    assert adaptations(model) == []


def test_a_pool_first_loses_that_pool_and_patchify_stems_are_kept():
    vgg_like = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                             nn.MaxPool2d(2))
    assert adapt_to_input(vgg_like, (28, 28)) == ["1: MaxPool2d removed"]
    assert isinstance(vgg_like[1], nn.Identity) and isinstance(vgg_like[3], nn.MaxPool2d)
    patchify = nn.Sequential(nn.Conv2d(1, 4, 4, stride=4), nn.Conv2d(4, 4, 2, stride=2))
    assert adapt_to_input(patchify, (28, 28)) == []
    assert patchify[0].stride == (4, 4) and patchify[1].stride == (2, 2)


def test_only_the_stem_maxpool_goes():
    """A max-pool after the second strided convolution belongs to the body: it stays."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.MaxPool2d(2))
    assert adapt_to_input(model, (28, 28)) == ["0: stride 2 -> 1"]
    assert isinstance(model[2], nn.MaxPool2d)


def test_adapted_model_exports_to_onnx_and_matches(tmp_path):
    """Only standard modules change: edgekd's exporter validates the ONNX model against PyTorch."""
    from edgekd.onnx_export import ExportConfig, to_onnx

    torch.manual_seed(0)
    model = build_model("torchvision:shufflenet_v2_x0_5", in_channels=1, num_classes=10, input_size=(28, 28))
    to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28), metadata={"edgekd.stage": "student"},
            cfg=ExportConfig(check_batch_sizes=[1, 2]))  # raises when the parity check fails
    assert (tmp_path / "m.onnx").is_file()
