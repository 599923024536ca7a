"""Extension point edgekd.distill.terms.TERMS: a term registered from outside edgekd is a
valid `distill.terms` kind in a recipe (its own keys and defaults, checked like the
built-in kinds) and takes part in a real distillation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edgekd.distill.offline import distill
from edgekd.distill.terms import TERMS, Term
from edgekd.errors import ConfigError
from edgekd.recipe import Recipe
from edgekd.train.plumbing import RunOptions, TrainData

CALLS: list = []  # one entry per loss computed by the toy term


class ToyL2Term(Term):
    """`offset` + weight * mean squared distance between the penultimate features (both
    models have the same width here); records what it was given."""

    keys = {"weight": 1.0, "offset": 0.0}
    penultimate = True

    def loss(self, feats, targets):
        CALLS.append({"student": [tuple(f.shape) for f in feats], "targets": [tuple(t.shape) for t in targets],
                      "grad": feats[0].requires_grad})
        l2 = sum((s - t).pow(2).mean() for s, t in zip(feats, targets))
        return self.weight * l2 + self.offset


@pytest.fixture
def toy_term():
    TERMS.register("toy-l2", ToyL2Term)
    CALLS.clear()
    yield ToyL2Term
    TERMS.unregister("toy-l2")
    CALLS.clear()


@pytest.fixture
def data(tiny_images):
    g = torch.Generator().manual_seed(1)
    return {"train_x": tiny_images(24, seed=0), "train_y": torch.randint(0, 3, (24,), generator=g),
            "val_x": tiny_images(8, seed=1), "val_y": torch.randint(0, 3, (8,), generator=g)}


def test_the_recipe_checks_and_fills_the_toy_terms_keys(toy_term):
    recipe = Recipe.from_dict({"distill": {"terms": [{"kind": "toy-l2", "offset": 2}]}})
    assert recipe.distill.terms == [{"kind": "toy-l2", "student": None, "teacher": None, "weight": 1.0,
                                     "offset": 2.0}]
    with pytest.raises(ConfigError, match=r"unknown key 'distill.terms\[0\].p' for kind toy-l2; "
                                          r"known: student, teacher, weight, offset"):
        Recipe.from_dict({"distill": {"terms": [{"kind": "toy-l2", "p": 2.0}]}})
    with pytest.raises(ConfigError, match=r"distill.terms\[0\].offset must be a number >= 0"):
        Recipe.from_dict({"distill": {"terms": [{"kind": "toy-l2", "offset": -1}]}})
    with pytest.raises(ConfigError, match=r"available: fitnet, at, sp, rkd, toy-l2"):
        Recipe.from_dict({"distill": {"terms": [{"kind": "toy-l3"}]}})


def test_unregistered_the_kind_is_unknown_again(toy_term):
    TERMS.unregister("toy-l2")
    with pytest.raises(ConfigError,
                       match=r"unknown distill.terms\[0\].kind 'toy-l2'; available: fitnet, at, sp, rkd \(in x\)$"):
        Recipe.from_dict({"distill": {"terms": [{"kind": "toy-l2"}]}}, source="x")


@pytest.mark.parametrize("augment", [False, True])  # teacher targets cached, or computed per step
def test_the_toy_term_is_called_every_step_and_adds_to_the_loss(toy_term, make_tiny_cnn, data, augment):
    def run(offset):
        recipe = Recipe.from_dict({"distill": {"terms": [{"kind": "toy-l2", "offset": offset}]}})
        cfg = dataclasses.replace(recipe.distill, epochs=2, batch_size=8, augment=augment)
        student = make_tiny_cnn(seed=1)
        result = distill(student, make_tiny_cnn(seed=0), TrainData.of(**data), cfg, RunOptions(progress=False))
        return result, student

    plain, plain_student = run(0.0)
    # 24 images in batches of 8, 2 epochs: 6 steps, each with the penultimate features (16 wide)
    assert len(CALLS) == 6
    assert all(c == {"student": [(8, 16)], "targets": [(8, 16)], "grad": True} for c in CALLS)
    shifted, shifted_student = run(5.0)
    # a constant changes the loss by exactly itself and the training not at all
    for a, b in zip(plain.epochs, shifted.epochs):
        assert b["loss"] == pytest.approx(a["loss"] + 5.0, abs=1e-4)
    for key, value in plain_student.state_dict().items():
        assert torch.equal(value, shifted_student.state_dict()[key]), key


def test_the_toy_term_changes_what_the_student_learns(toy_term, make_tiny_cnn, data):
    def student_after(terms):
        recipe = Recipe.from_dict({"distill": {"terms": terms}})
        cfg = dataclasses.replace(recipe.distill, epochs=1, batch_size=8)
        student = make_tiny_cnn(seed=1)
        distill(student, make_tiny_cnn(seed=0), TrainData.of(**data), cfg, RunOptions(progress=False))
        return student

    without, with_toy = student_after([]), student_after([{"kind": "toy-l2", "weight": 10.0}])
    assert CALLS
    assert not torch.allclose(without.fc.weight, with_toy.fc.weight)
