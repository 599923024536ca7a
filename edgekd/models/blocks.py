"""Building blocks shared by the zoo's networks (models/zoo.py) and the edgenet family
(models/family.py), in a module of their own so that neither imports the other."""

from __future__ import annotations

import copy

import torch
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: what folds into one int8 convolution on export."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class RepConv(nn.Module):
    """A 3x3 convolution trained with parallel branches and run as one (RepVGG, Ding et al. 2021):
    3x3 conv-BN + 1x1 conv-BN (+ BN alone when the shape is kept), summed, then ReLU. The
    branches give training the shortcuts of a residual network; `fused()` folds them into one
    3x3 convolution (`plain`'s layers), so the exported graph has no int8 Add and no 1x1 convolution.
    `asymmetric`: also a 1x3 and a 3x1 conv-BN branch (ACNet, Ding et al. 2019), which strengthen
    the kernel's centre cross; they fold into the same 3x3 kernel."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, asymmetric: bool = False):
        super().__init__()
        self.conv3 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False), nn.BatchNorm2d(out_ch))
        self.identity = nn.BatchNorm2d(in_ch) if in_ch == out_ch and stride == 1 else None
        self.row = self.column = None
        if asymmetric:  # padding only along the kernel's long side: the windows share the 3x3 one's centre
            self.row = nn.Sequential(nn.Conv2d(in_ch, out_ch, (1, 3), stride, (0, 1), bias=False),
                                     nn.BatchNorm2d(out_ch))
            self.column = nn.Sequential(nn.Conv2d(in_ch, out_ch, (3, 1), stride, (1, 0), bias=False),
                                        nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv3(x) + self.conv1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        if self.row is not None:
            out = out + self.row(x) + self.column(x)
        return self.relu(out)

    @torch.no_grad()
    def fused(self) -> nn.Sequential:
        """What the branches compute in eval mode, as `plain`'s conv_bn_relu (3x3 convolution, batch norm,
        ReLU): the summed kernel in the convolution, the summed bias in a batch norm that adds it."""
        weight, bias = _fold(self.conv3[0].weight, self.conv3[1])
        weight1, bias1 = _fold(self.conv1[0].weight, self.conv1[1])
        weight[:, :, 1, 1] += weight1[:, :, 0, 0]  # a 1x1 kernel is a 3x3 one's centre (same stride, padding 1 vs 0)
        bias += bias1
        if self.row is not None:  # 1x3 is the 3x3 kernel's middle row, 3x1 its middle column
            weight_row, bias_row = _fold(self.row[0].weight, self.row[1])
            weight_column, bias_column = _fold(self.column[0].weight, self.column[1])
            weight[:, :, 1:2, :] += weight_row
            weight[:, :, :, 1:2] += weight_column
            bias += bias_row + bias_column
        if self.identity is not None:
            eye = torch.zeros_like(weight)
            eye[range(weight.shape[0]), range(weight.shape[0]), 1, 1] = 1.0
            weight_id, bias_id = _fold(eye, self.identity)
            weight += weight_id
            bias += bias_id
        conv = self.conv3[0]
        out = conv_bn_relu(conv.in_channels, conv.out_channels, conv.stride[0])
        out[0].weight.copy_(weight)
        bn = out[1]
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) = x
        return out.train(self.training)


def _fold(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a bias-free convolution followed by `bn` in eval mode, as one convolution."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def deployed(model: nn.Module) -> nn.Module:
    """`model` as it is exported: a copy with every RepConv fused into one convolution (an
    edgenet `rep` student becomes the `plain` one of the same arguments), or `model` itself when
    it has none. Export, cost counts, QAT and pruning all see this form."""
    if not any(isinstance(m, RepConv) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the new layers' initial weights are overwritten: leave the RNG as it was
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, RepConv):
                    setattr(module, name, child.fused())
    return model


class InvertedResidual(nn.Module):
    """1x1 expand, depthwise 3x3, 1x1 project; a residual when the shape is kept. `activation`:
    ReLU6 in MobileNetV2 as published; the edgenet family takes ReLU, which the int8 kernels fuse
    (ReLU6's clip is not fused on some providers)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, activation: type[nn.Module] = nn.ReLU6):
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), activation(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            activation(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (for ReLU), batch norm as identity: the zoo's initialization."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def add_classifier(model: nn.Module, in_ch: int, num_classes: int) -> None:
    """The head of the zoo's residual networks and the edgenet family: global average pooling
    and one Linear layer (`model.pool`, `model.fc`), then the zoo's initialization of the whole
    model, in that order (the order draws the initial weights)."""
    model.pool = nn.AdaptiveAvgPool2d(1)
    model.fc = nn.Linear(in_ch, num_classes)
    init_weights(model)


def classify(model: nn.Module, features):
    """Logits from the last feature map, through the head add_classifier made."""
    return model.fc(model.pool(features).flatten(1))
