"""Building blocks shared by the zoo's networks (models/zoo.py) and the edgenet family
(models/family.py), in a module of their own so that neither imports the other."""

from __future__ import annotations

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
