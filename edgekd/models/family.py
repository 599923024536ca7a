"""EdgeNet: a family of int8-friendly students described by a few numbers, registered as
the architecture `edgenet` (issue 27: students shaped for the device).

    arch: edgenet
    arch_args: {stem: 16, stem_stride: 1, block: basic, expand: 4,
                stages: [[1, 16, 1], [1, 32, 2], [1, 64, 2]]}   # [depth, width, stride] each

Every choice is one that ONNX Runtime's int8 CPU kernels run well: channel counts in
multiples of 16 (the blocks of the int8 GEMM kernels), ReLU only (it fuses into
QLinearConv; HardSwish and SiLU fall back to float), dense 3x3 convolutions in `basic`
residual blocks, `plain` 3x3 convolutions without a shortcut (one convolution per block: no
int8 Add and no 1x1 shortcut convolution between the int8 convolutions, where int8 gains most
over fp32 on small inputs), `rep` ones (RepVGG: trained with a 1x1 and an identity branch
beside each 3x3 convolution, the stem's included, and exported as the `plain` student of the
same arguments: models.blocks.RepConv), `rep_ac` ones (rep plus ACNet's 1x3 and 3x1 branches,
fused into the same kernel; quantize them with QAT: post-training int8 lost up to 6 points on
Fashion-MNIST), or `inverted` residual blocks (1x1 expand, depthwise
3x3, 1x1 project) for targets that run depthwise convolutions fast; global average pooling and
one Linear.
"""

from __future__ import annotations

from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.blocks import BasicBlock, InvertedResidual, RepConv, add_classifier, classify, conv_bn_relu
from edgekd.models.family_blocks import BLOCKS, FAMILY
from edgekd.models.registry import ARCHITECTURES

CHANNEL_MULTIPLE = 16  # what the int8 kernels like; other counts are padded inside them
MAX_WIDTH = 1024
MAX_DEPTH = 16
MAX_STAGES = 8
MAX_EXPAND = 8
REP_BLOCKS = ("rep", "rep_ac")  # trained with branches, exported as plain
DEFAULT_STAGES = ((1, 16, 1), (1, 32, 2), (1, 64, 2))


def _nearest_multiples(width) -> str:
    low = max(CHANNEL_MULTIPLE, int(width) // CHANNEL_MULTIPLE * CHANNEL_MULTIPLE)
    high = low + CHANNEL_MULTIPLE
    return f"{low}" if low == width else f"{low} or {high}"


def _check_width(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_WIDTH:
        raise ConfigError(f"edgenet {where} must be a whole number of channels in 16..{MAX_WIDTH}, got {value!r}")
    if value % CHANNEL_MULTIPLE:
        raise ConfigError(f"edgenet {where} {value} is not a multiple of {CHANNEL_MULTIPLE} (what the int8 kernels "
                          f"run without padding); use {_nearest_multiples(value)}")
    return value


def _check_whole(value, where: str, allowed) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        shown = f"{min(allowed)}..{max(allowed)}" if len(allowed) > 2 else " or ".join(map(str, allowed))
        raise ConfigError(f"edgenet {where} must be {shown}, got {value!r}")
    return value


def check_edgenet_args(stem=16, stem_stride=1, stages=DEFAULT_STAGES, block="basic", expand=4) -> list:
    """The stages as [(depth, width, stride)], after checking every argument: a ConfigError
    (one line, naming the fix) for anything the family does not build."""
    _check_width(stem, "arch_args.stem")
    _check_whole(stem_stride, "arch_args.stem_stride", (1, 2))
    if block not in BLOCKS:
        raise ConfigError(f"edgenet arch_args.block must be one of {', '.join(BLOCKS)}, got {block!r}")
    _check_whole(expand, "arch_args.expand", range(1, MAX_EXPAND + 1))
    if not isinstance(stages, (list, tuple)) or not 0 < len(stages) <= MAX_STAGES:
        raise ConfigError(f"edgenet arch_args.stages must be a list of 1..{MAX_STAGES} [depth, width, stride] "
                          f"entries, e.g. [[1, 16, 1], [1, 32, 2]]")
    checked = []
    for i, stage in enumerate(stages):
        where = f"arch_args.stages[{i}]"
        if not isinstance(stage, (list, tuple)) or len(stage) != 3:
            raise ConfigError(f"edgenet {where} must be [depth, width, stride], got {stage!r}")
        depth, width, stride = stage
        checked.append((_check_whole(depth, where + " depth", range(1, MAX_DEPTH + 1)),
                        _check_width(width, where + " width"), _check_whole(stride, where + " stride", (1, 2))))
    return checked


class EdgeNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, stem: int = 16, stem_stride: int = 1,
                 stages=DEFAULT_STAGES, block: str = "basic", expand: int = 4):
        super().__init__()
        stages = check_edgenet_args(stem, stem_stride, stages, block, expand)
        self.stem = (_block(block, in_channels, stem, stem_stride, expand) if block in REP_BLOCKS
                     else conv_bn_relu(in_channels, stem, stem_stride))  # a rep student's stem has branches too
        layers, in_ch = [], stem
        for depth, width, stride in stages:
            for i in range(depth):
                step = stride if i == 0 else 1
                layers.append(_block(block, in_ch, width, step, expand))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        add_classifier(self, in_ch, num_classes)

    def forward(self, x):
        return classify(self, self.layers(self.stem(x)))


def _block(block: str, in_ch: int, width: int, stride: int, expand: int) -> nn.Module:
    if block == "basic":
        return BasicBlock(in_ch, width, stride)
    if block == "plain":
        return conv_bn_relu(in_ch, width, stride)
    if block in REP_BLOCKS:
        return RepConv(in_ch, width, stride, asymmetric=block == "rep_ac")
    return InvertedResidual(in_ch, width, stride, expand, activation=nn.ReLU)


ARCHITECTURES.register(FAMILY, EdgeNet)
