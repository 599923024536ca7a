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

from edgekd.configtools import check_builtin_arch_args, clip, did_you_mean, shown
from edgekd.errors import ConfigError, first_line
from edgekd.models.adapt import adapt_to_input
from edgekd.models.blocks import BasicBlock, InvertedResidual, add_classifier, classify, init_weights
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
        add_classifier(self, in_ch, num_classes)

    def forward(self, x):
        return classify(self, self.layers(self.relu(self.bn1(self.conv1(x)))))


def _round8(value: float) -> int:
    return max(8, int(value + 4) // 8 * 8)


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
    (then the current folder), e.g. the recipe's folder.
    arch_args may repeat in_channels or num_classes only with the same value (edgekd passes
    the data's; `edgekd export --weights` without --data takes them as the model's shape)."""
    arch_args = agreed_shape_args(arch, arch_args, in_channels=in_channels, num_classes=num_classes)
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
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{arch}'{_closest_arch(arch)}; available: "
                          f"{', '.join(ARCHITECTURES.names())}; or '{TORCHVISION_PREFIX}NAME' (any torchvision "
                          f"classifier), '{TIMM_PREFIX}NAME' (with pip install 'edgekd[timm]') or "
                          "'package.module:function' (edgekd list architectures)")
    factory = ARCHITECTURES.get(arch)
    return _call(factory, arch, in_channels=in_channels, num_classes=num_classes, **arch_args)


def _closest_arch(arch: str) -> str:
    """did-you-mean for an unknown name: a registered one, or the torchvision model it names."""
    from edgekd.models.external import torchvision_names

    if isinstance(arch, str) and ":" not in arch and arch in torchvision_names():
        return f" (did you mean '{TORCHVISION_PREFIX}{arch}'?)"
    return did_you_mean(arch, ARCHITECTURES.names())


def agreed_shape_args(arch: str, arch_args: dict, **passed) -> dict:
    """arch_args without the in_channels / num_classes that edgekd passes itself: a repeat of
    the same value is dropped; another value is a ConfigError (never a TypeError about a
    keyword given twice)."""
    for key, value in passed.items():
        if key in arch_args and arch_args[key] != value:
            raise ConfigError(clip(f"arch_args {key}: {shown(arch_args[key])} of '{arch}' disagrees with the {value} "
                                   f"{'input channels' if key == 'in_channels' else 'classes'} of the data; edgekd "
                                   f"passes {key} itself: remove it from arch_args"))
    return {k: v for k, v in arch_args.items() if k not in passed}


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
