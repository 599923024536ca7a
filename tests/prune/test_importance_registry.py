"""Extension point edgekd.prune.importance.IMPORTANCES: an importance registered from
outside edgekd is a valid `prune.importance` in a recipe, and prune_channels removes the
channels it scores lowest."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from edgekd.errors import ConfigError
from edgekd.prune.channels import PrunePlan, channel_table, prune_channels
from edgekd.prune.importance import IMPORTANCES
from edgekd.recipe import Recipe

INPUT = (1, 8, 8)
SCORED: list = []  # the channel count of each group the toy scored


class FirstChannelsGo(tp.importance.Importance):
    """Toy: a channel's score is its index, so the first channels of every group go."""

    def __call__(self, group):
        _, idxs = group[0]
        SCORED.append(len(idxs))
        return torch.arange(len(idxs), dtype=torch.float)


class NeedsGradients(tp.importance.Importance):
    """Toy: scores by |grad| of the group's layer; says so, so pruning runs a backward first."""

    needs_gradients = True

    def __call__(self, group):
        dep, idxs = group[0]
        grad = dep.target.module.weight.grad
        assert grad is not None, "no gradients: prune_channels did not run the backward pass"
        return grad.abs().flatten(1).sum(1)[list(idxs)]


@pytest.fixture
def toy_importances():
    IMPORTANCES.register("toy-first-go", FirstChannelsGo)
    IMPORTANCES.register("toy-grad", NeedsGradients)
    SCORED.clear()
    yield
    IMPORTANCES.unregister("toy-first-go")
    IMPORTANCES.unregister("toy-grad")
    SCORED.clear()


def test_the_recipe_accepts_the_toy_and_lists_it(toy_importances):
    assert Recipe.from_dict({"prune": {"importance": "toy-first-go"}}).prune.importance == "toy-first-go"
    with pytest.raises(ConfigError, match=r"unknown prune.importance 'toy'; available: l1, l2, bn_scale, taylor, "
                                          r"random, toy-first-go, toy-grad"):
        Recipe.from_dict({"prune": {"importance": "toy"}})


def test_the_toy_decides_which_channels_go(toy_importances, make_tiny_cnn):
    recipe = Recipe.from_dict({"prune": {"enabled": True, "importance": "toy-first-go", "ratio": 0.5}})
    model = make_tiny_cnn(seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, *INPUT)
    prune_channels(model, PrunePlan(ratio=recipe.prune.ratio, importance=recipe.prune.importance, round_to=None),
                   input_shape=INPUT)
    assert SCORED, "the toy importance was never asked"
    # the first conv and the classifier are protected; the middle convs lose their first half
    assert channel_table(model) == {"features.0.0": 4, "features.2.0": 4, "features.4.0": 8, "fc": 3}
    state = model.state_dict()
    assert torch.equal(state["features.2.0.weight"], before["features.2.0.weight"][4:])
    assert torch.equal(state["features.2.1.weight"], before["features.2.1.weight"][4:])  # its batch norm
    assert torch.equal(state["features.4.0.weight"], before["features.4.0.weight"][8:, 4:])
    assert torch.equal(state["fc.weight"], before["fc.weight"][:, 8:])
    assert model(x).shape == (2, 3)


def test_an_importance_that_needs_gradients_gets_them(toy_importances, make_tiny_cnn, tiny_images):
    model = make_tiny_cnn(seed=0)
    with pytest.raises(ConfigError, match="importance 'toy-grad' needs a batch of training images"):
        prune_channels(model, PrunePlan(ratio=0.5, importance="toy-grad"), input_shape=INPUT)
    batch = (tiny_images(4), torch.tensor([0, 1, 2, 0]))
    prune_channels(model, PrunePlan(ratio=0.5, importance="toy-grad", round_to=None), input_shape=INPUT,
                   loss_batch=batch)
    assert channel_table(model)["features.2.0"] == 4
    assert all(p.grad is None for p in model.parameters())  # cleared after the step
