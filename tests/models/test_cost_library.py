"""count_macs is torch's FLOP counter (torch.utils.flop_counter) halved: the zoo's numbers are
those the per-layer Conv2d/Linear hooks gave (pinned below, as the reports show them), and ops
those hooks never saw (matmul, Conv1d, transposed convolutions) count too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.models.cost import count_macs
from edgekd.models.zoo import build_model

# MACs of one sample as the Conv2d/Linear hooks counted them before the switch
HOOK_MACS = {
    ("resnet8", 1, 28): 9345920, ("resnet8", 3, 32): 12501632,
    ("resnet20", 1, 28): 31021952, ("resnet20", 3, 32): 40813184,
    ("resnet56", 1, 28): 96050048, ("resnet56", 3, 32): 125747840,
    ("mobilenetv2", 1, 28): 72938624, ("mobilenetv2", 3, 32): 87976448,
    ("tinycnn", 1, 28): 1919872, ("tinycnn", 3, 32): 2802304,
}


@pytest.mark.parametrize("arch, channels, size", sorted(HOOK_MACS))
def test_the_zoo_counts_as_before(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=10)
    model.train()
    assert count_macs(model, (channels, size, size)) == HOOK_MACS[arch, channels, size]
    assert model.training  # the mode it came in with


def test_a_torchvision_model_counts_as_before():
    model = build_model("torchvision:mobilenet_v3_small", in_channels=1, num_classes=10, input_size=(28, 28))
    assert count_macs(model, (1, 28, 28)) == 4934688


class SelfAttention(nn.Module):
    """A matmul between activations: no Linear or Conv2d layer does it."""

    def forward(self, x):  # (N, 4, 3)
        return torch.bmm(x, x.transpose(1, 2))  # (N, 4, 4): 4*4 outputs of 3 MACs each = 48


def test_ops_beyond_conv2d_and_linear_count_by_hand():
    assert count_macs(SelfAttention(), (4, 3)) == 48
    # Conv1d 2->3 k3 pad1 on length 5: 3*5 outputs of 2*3 MACs = 90
    assert count_macs(nn.Conv1d(2, 3, 3, padding=1, bias=False), (2, 5)) == 90
    # ConvTranspose2d 1->2 k2 stride 2 on 3x3: each of the 9 inputs meets 2*2*2 weights = 72
    assert count_macs(nn.ConvTranspose2d(1, 2, 2, stride=2, bias=False), (1, 3, 3)) == 72
