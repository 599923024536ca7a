"""Models by name: the architectures registered in ARCHITECTURES (a small zoo: resnet8,
resnet20, resnet56, mobilenetv2, tinycnn), any torchvision or timm classifier, or a user
factory (models/external.py).

    build_model("resnet20", in_channels=1, num_classes=10)
    build_model("torchvision:resnet18", in_channels=1, num_classes=10, input_size=(28, 28))
    build_model("timm:resnet18", in_channels=1, num_classes=10)       # pip install 'edgekd[timm]'
    build_model("mypkg.nets:make", in_channels=1, num_classes=10, width=2)

A registered architecture or a user factory is called as
fn(in_channels=..., num_classes=..., **arch_args) and returns a torch.nn.Module. A user's
own, registered from a module named in the recipe's `plugins:` (then `arch: mlp`):

    from torch import nn
    from edgekd.models.zoo import ARCHITECTURES

    @ARCHITECTURES.register("mlp")
    def mlp(in_channels, num_classes, hidden=64, size=28):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, hidden),
                             nn.ReLU(), nn.Linear(hidden, num_classes))
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from edgekd.configtools import check_builtin_arch_args, clip, shown
from edgekd.errors import ConfigError, first_line
from edgekd.models.adapt import adapt_to_input
from edgekd.models.blocks import BasicBlock, init_weights
from edgekd.models.external import import_factory, timm_model, torchvision_model
from edgekd.models.registry import ARCHITECTURES


def check_arch_arg(arch: str, name: str, value) -> None:
    """ConfigError unless a built-in architecture's argument is in its range
    (configtools.BUILTIN_ARCH_ARGS): checked before any layer of that size is allocated."""
    check_builtin_arch_args(arch, {name: value}, "arch_args")


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        check_arch_arg(f"resnet{depth}", "width", width)
        if (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        widths = [max(4, int(round(c * width))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, in_ch = [], widths[0]
        for stage, out_ch in enumerate(widths):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def _round8(value: float) -> int:
    return max(8, int(value + 4) // 8 * 8)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride) per stage
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, last_channels: int = 1280):
        super().__init__()
        check_arch_arg("mobilenetv2", "width", width)
        check_arch_arg("mobilenetv2", "last_channels", last_channels)
        stem = _round8(32 * width)
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        ]
        in_ch = stem
        for expand, channels, repeats, stride in self.STAGES:
            out_ch = _round8(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expand))
                in_ch = out_ch
        last = _round8(last_channels * max(1.0, width))
        layers.append(nn.Sequential(nn.Conv2d(in_ch, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        check_arch_arg("tinycnn", "width", width)
        w = width

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(in_channels, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


@ARCHITECTURES.register("resnet8")
def resnet8(in_channels: int, num_classes: int, **kw) -> nn.Module:
    return CifarResNet(8, in_channels, num_classes, **kw)


@ARCHITECTURES.register("resnet20")
def resnet20(in_channels: int, num_classes: int, **kw) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes, **kw)


@ARCHITECTURES.register("resnet56")
def resnet56(in_channels: int, num_classes: int, **kw) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes, **kw)


ARCHITECTURES.register("mobilenetv2", MobileNetV2)
ARCHITECTURES.register("tinycnn", TinyCNN)


TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"


def build_model(arch: str, *, in_channels: int, num_classes: int, input_size: tuple[int, int] | None = None,
                search_dirs: Iterable[str | Path] = (), **arch_args) -> nn.Module:
    """Build a model by registered name (ARCHITECTURES), 'torchvision:NAME', 'timm:NAME' or
    'package.module:function'.

    input_size: the data's (height, width). A torchvision or timm classifier given images
    below adapt.SMALL_INPUT pixels gets a full-resolution stem (stride 1, no early max-pool),
    and at any size batch-norm momentum of at least 0.1; what was changed is
    `adapt.adaptations(model)`. None: built as it comes.
    search_dirs: where 'module:function' looks for module.py when it is not importable
    (then the current folder), e.g. the recipe's folder."""
    if arch.startswith(TORCHVISION_PREFIX):
        model = torchvision_model(arch[len(TORCHVISION_PREFIX):], in_channels, num_classes, arch_args)
        adapt_to_input(model, input_size)
        return model
    if arch.startswith(TIMM_PREFIX):
        model = timm_model(arch[len(TIMM_PREFIX):], in_channels, num_classes, arch_args)
        adapt_to_input(model, input_size)
        return model
    if ":" in arch:
        factory = import_factory(arch, search_dirs)
        model = _call(factory, arch, in_channels=in_channels, num_classes=num_classes, **arch_args)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"factory '{arch}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    try:
        factory = ARCHITECTURES.get(arch)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or '{TORCHVISION_PREFIX}NAME' (any torchvision classifier), "
                          f"'{TIMM_PREFIX}NAME' (with pip install 'edgekd[timm]') or 'package.module:function'") from None
    return _call(factory, arch, in_channels=in_channels, num_classes=num_classes, **arch_args)


def _call(factory, arch: str, **kwargs) -> nn.Module:
    """factory(**kwargs); what it raises for arguments it cannot take (a misspelt key: TypeError;
    a negative width: ValueError or RuntimeError from torch; too large: MemoryError) is a
    ConfigError naming the architecture and its arguments."""
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError, MemoryError) as exc:
        args = {k: v for k, v in kwargs.items() if k not in ("in_channels", "num_classes")}
        raise ConfigError(clip(f"cannot build '{arch}' with arguments {shown(args)} (for {kwargs.get('in_channels')} "
                               f"channels, {kwargs.get('num_classes')} classes): {first_line(exc)}")) from exc


# the edgenet family (issue 27) registers itself here, so that any run that loads the zoo can name it
import edgekd.models.family  # noqa: E402,F401
