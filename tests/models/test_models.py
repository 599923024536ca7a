"""Tests for edgekd.models: the zoo, torchvision adapters, user factories, params and MACs."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.cost import count_macs, count_params
from edgekd.models.zoo import ARCHITECTURES, CifarResNet, build_model

# small arch_args so every zoo model builds in milliseconds; stem = the first conv's outputs
SMALL = {
    "resnet8": ({"width": 0.25}, 4),  # max(4, round(16 * 0.25)) = 4
    "resnet20": ({"width": 0.25}, 4),
    "resnet56": ({"width": 0.25}, 4),
    "mobilenetv2": ({"width": 0.25, "last_channels": 64}, 8),  # _round8(32 * 0.25) = max(8, 12 // 8 * 8) = 8
    "tinycnn": ({"width": 4}, 4),
    "edgenet": ({"stem": 16, "stages": [[1, 16, 1]]}, 16),  # widths in multiples of 16
}


def test_small_args_cover_the_whole_zoo():
    assert set(SMALL) == set(ARCHITECTURES)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", sorted(SMALL))
def test_zoo_builds_and_outputs_n_by_classes(arch, in_channels):
    args, stem = SMALL[arch]
    torch.manual_seed(0)
    model = build_model(arch, in_channels=in_channels, num_classes=5, **args).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels and first_conv.out_channels == stem
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 8, 8))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_rgb_models_have_exactly_the_extra_stem_weights(arch):
    # going from 1 to 3 input channels adds stem * 2 * 3 * 3 weights and nothing else
    args, stem = SMALL[arch]
    grey = count_params(build_model(arch, in_channels=1, num_classes=5, **args))
    rgb = count_params(build_model(arch, in_channels=3, num_classes=5, **args))
    assert rgb - grey == stem * 2 * 9


def test_tinycnn_params_and_macs_by_hand():
    model = build_model("tinycnn", in_channels=1, num_classes=3, width=4)
    # conv 1->4: 4*1*9 = 36, BN 2*4 = 8; conv 4->8: 8*4*9 = 288, BN 16; conv 8->16: 16*8*9 = 1152,
    # BN 32; fc 16*3 + 3 = 51. 36 + 8 + 288 + 16 + 1152 + 32 + 51 = 1583
    assert count_params(model) == 1583
    # on 1x8x8: conv1 4*8*8 = 256 outputs * 9 = 2304; maxpool -> 4x4; conv2 8*4*4 = 128 outputs * (4*9) = 4608;
    # maxpool -> 2x2; conv3 16*2*2 = 64 outputs * (8*9) = 4608; fc 3 outputs * 16 = 48.
    # 2304 + 4608 + 4608 + 48 = 11568
    assert count_macs(model, (1, 8, 8)) == 11568


def test_resnet8_quarter_width_by_hand():
    model = build_model("resnet8", in_channels=1, num_classes=10, width=0.25)
    # widths 4, 8, 16; one BasicBlock per stage, 1x1 conv + BN shortcuts where the shape changes
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 3
    assert [isinstance(b.shortcut, nn.Identity) for b in blocks] == [True, False, False]
    # stem 36 + 8; block 4->4: 144 + 8 + 144 + 8 = 304; block 4->8: 288 + 16 + 576 + 16 + 32 + 16 = 944;
    # block 8->16: 1152 + 32 + 2304 + 32 + 128 + 32 = 3680; fc 16*10 + 10 = 170. Total 5142
    assert count_params(model) == 5142
    # on 1x8x8: stem 256*9 = 2304; block1 2 * 256*36 = 18432; block2 (4x4) 128*36 + 128*72 + 128*4
    # = 4608 + 9216 + 512; block3 (2x2) 64*72 + 64*144 + 64*8 = 4608 + 9216 + 512; fc 10*16 = 160.
    # 2304 + 18432 + 14336 + 14336 + 160 = 49568
    assert count_macs(model, (1, 8, 8)) == 49568


@pytest.mark.parametrize("depth", [7, 9, 10, 0])
def test_cifar_resnet_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ConfigError, match=f"6n\\+2.*got {depth}"):
        CifarResNet(depth, 1, 10)


# -- torchvision --------------------------------------------------------------------------


def test_torchvision_resnet18_grey_seven_classes():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", in_channels=1, num_classes=7).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7)  # the RGB stem was swapped for a 1-channel one
    assert model.conv1.stride == (2, 2) and model.conv1.padding == (3, 3) and model.conv1.bias is None
    assert model.fc.out_features == 7
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7)


def test_unknown_torchvision_model_lists_available():
    with pytest.raises(ConfigError) as info:
        build_model("torchvision:resnet19", in_channels=3, num_classes=10)
    # the closest names, how many there are and where all of them are listed (the list is never cut mid-way)
    assert "resnet19" in str(info.value) and "did you mean 'resnet18'" in str(info.value)
    import torchvision

    count = len(torchvision.models.list_models(module=torchvision.models))
    assert f"{count} torchvision classifiers: edgekd list architectures lists them all" in str(info.value)


# -- names and factories ------------------------------------------------------------------


def test_unknown_name_lists_available_names():
    with pytest.raises(ConfigError) as info:
        build_model("resnet9", in_channels=1, num_classes=10)
    message = str(info.value)
    assert "'resnet9'" in message
    for name in ARCHITECTURES:
        assert name in message
    assert "torchvision:NAME" in message and "package.module:function" in message


def test_misspelt_arch_args_are_a_config_error():
    with pytest.raises(ConfigError, match=r"cannot build 'tinycnn' with arguments .*'widht'"):
        build_model("tinycnn", in_channels=1, num_classes=3, widht=4)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A user module in tmp_path, importable by a unique name; removed from sys.modules after."""
    name = f"user_nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        from torch import nn

        CALLS = []

        def make(in_channels, num_classes, width=1):
            CALLS.append({"in_channels": in_channels, "num_classes": num_classes, "width": width})
            return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, num_classes))

        def not_a_model(in_channels, num_classes):
            return 42

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_user_factory_receives_channels_classes_and_arch_args(factory_module):
    model = build_model(f"{factory_module}:make", in_channels=2, num_classes=4, width=3)
    calls = sys.modules[factory_module].CALLS
    assert calls == [{"in_channels": 2, "num_classes": 4, "width": 3}]
    assert model[0].in_channels == 2 and model[0].out_channels == 3
    assert model(torch.randn(5, 2, 6, 6)).shape == (5, 4)


def test_user_factory_returning_non_module(factory_module):
    with pytest.raises(ConfigError, match="returned int, not a torch.nn.Module"):
        build_model(f"{factory_module}:not_a_model", in_channels=1, num_classes=2)


@pytest.mark.parametrize(
    "func, fragment",
    [("missing", "has no function 'missing'"), ("NOT_CALLABLE", "has no function 'NOT_CALLABLE'")],
)
def test_user_factory_missing_function(factory_module, func, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model(f"{factory_module}:{func}", in_channels=1, num_classes=2)


def test_user_factory_bad_argument(factory_module):
    with pytest.raises(ConfigError, match="cannot build"):
        build_model(f"{factory_module}:make", in_channels=1, num_classes=2, depth=3)


def test_user_factory_missing_module():
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg_for_edgekd.nets'"):
        build_model("no_such_pkg_for_edgekd.nets:make", in_channels=1, num_classes=2)


@pytest.mark.parametrize("spec", [":make", ".nets:make"])
def test_malformed_factory_spec_is_a_config_error(spec):
    with pytest.raises(ConfigError):
        build_model(spec, in_channels=1, num_classes=2)


# -- params and MACs ----------------------------------------------------------------------


def test_count_params_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    # conv: 2*1*3*3 weights + 2 biases = 20; linear: 32*5 weights + 5 biases = 165; 20 + 165 = 185
    assert count_params(model) == 185


@pytest.mark.parametrize(
    "conv, linear_in, expected",
    [
        # Conv2d 1->2 k3 pad1 on 4x4: output 2x4x4 = 32 values, each 1*3*3 = 9 MACs -> 288;
        # Linear 32->5: 5 outputs * 32 = 160. 288 + 160 = 448
        (lambda: nn.Conv2d(1, 2, 3, padding=1), 32, 448),
        # stride 2: output 2x2x2 = 8 values * 9 = 72; Linear 8->5: 5 * 8 = 40. 72 + 40 = 112
        (lambda: nn.Conv2d(1, 2, 3, stride=2, padding=1), 8, 112),
        # no padding: output 2x2x2 = 8 values * 9 = 72; + 40 = 112
        (lambda: nn.Conv2d(1, 2, 3), 8, 112),
        # 1x1 conv 1->2: 2x4x4 = 32 values * 1 = 32; Linear 32->5: 160. 32 + 160 = 192
        (lambda: nn.Conv2d(1, 2, 1), 32, 192),
    ],
    ids=["k3-pad1", "stride2", "no-pad", "1x1"],
)
def test_count_macs_by_hand(conv, linear_in, expected):
    model = nn.Sequential(conv(), nn.ReLU(), nn.Flatten(), nn.Linear(linear_in, 5))
    assert count_macs(model, (1, 4, 4)) == expected


def test_count_macs_grouped_conv_by_hand():
    # Conv2d 2->4, groups 2, k3 pad1 on 2x4x4: output 4x4x4 = 64 values, each (2/2)*3*3 = 9 MACs -> 576
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2))
    assert count_macs(model, (2, 4, 4)) == 576


def test_count_macs_counts_a_reused_layer_each_time():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.fc(x))

    # two calls of Linear 3->3: 2 * (3 outputs * 3) = 18
    assert count_macs(Twice(), (3,)) == 18


@pytest.mark.parametrize("training", [True, False])
def test_count_macs_restores_mode_and_removes_hooks(training):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
    model.train(training)
    running_mean = model[1].running_mean.clone()
    assert count_macs(model, (1, 4, 4)) == 288
    assert model.training is training
    assert not model[0]._forward_hooks
    assert torch.equal(model[1].running_mean, running_mean)  # counted in eval mode: BN stats untouched
