"""Extension point edgekd.models.zoo.ARCHITECTURES: an architecture registered from outside
edgekd by name is built by build_model from a recipe's `distill.arch` and `arch_args`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.zoo import ARCHITECTURES, build_model
from edgekd.recipe import Recipe


def toy_mlp(in_channels: int, num_classes: int, hidden: int = 8, size: int = 8) -> nn.Module:
    """Toy: flatten, one hidden layer, the classifier."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@pytest.fixture
def toy_arch():
    ARCHITECTURES.register("toy-mlp", toy_mlp)
    yield toy_mlp
    ARCHITECTURES.unregister("toy-mlp")


def test_a_recipe_names_the_toy_and_build_model_builds_it(toy_arch):
    recipe = Recipe.from_dict({"distill": {"arch": "toy-mlp", "arch_args": {"hidden": 5}}})
    model = build_model(recipe.distill.arch, in_channels=1, num_classes=3, **recipe.distill.arch_args)
    assert isinstance(model, nn.Sequential) and model[1].out_features == 5 and model[3].out_features == 3
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_the_toy_is_listed_and_its_arguments_checked(toy_arch):
    with pytest.raises(ConfigError, match=r"unknown architecture 'toy' \(did you mean 'toy-mlp'\?\); available: resnet8, resnet20, resnet56, "
                                          r"mobilenetv2, tinycnn, edgenet, toy-mlp; or 'torchvision:NAME'"):
        build_model("toy", in_channels=1, num_classes=3)
    with pytest.raises(ConfigError, match=r"cannot build 'toy-mlp' with arguments .*'hiden'"):
        build_model("toy-mlp", in_channels=1, num_classes=3, hiden=4)


def test_unregistered_the_toy_is_unknown_again(toy_arch):
    ARCHITECTURES.unregister("toy-mlp")
    with pytest.raises(ConfigError, match="unknown architecture 'toy-mlp'; available: resnet8, resnet20, resnet56, "
                                          "mobilenetv2, tinycnn, edgenet; or"):
        build_model("toy-mlp", in_channels=1, num_classes=3)
