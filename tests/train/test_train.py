"""Tests for edgekd.train: preprocessing, augmentation, predict/accuracy and the fit loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import TrainingDiverged
from edgekd.train.augment import augment_batch
from edgekd.train.config import TrainConfig
from edgekd.train.evaluate import accuracy, predict
from edgekd.train.loop import FitResult, cross_entropy_step, fit, make_optimizer
from edgekd.train.plumbing import RunOptions, TrainData
from edgekd.train.tensors import to_tensor

# -- to_tensor ----------------------------------------------------------------------------


def test_to_tensor_one_channel_by_hand():
    images = np.array([0, 51, 255, 102], dtype=np.uint8).reshape(1, 1, 2, 2)
    x = to_tensor(images, mean=(0.5,), std=(0.25,))
    # (v / 255 - 0.5) / 0.25: 0 -> -2.0; 51 -> (0.2 - 0.5) / 0.25 = -1.2; 255 -> 2.0; 102 -> (0.4 - 0.5) / 0.25 = -0.4
    expected = torch.tensor([-2.0, -1.2, 2.0, -0.4]).view(1, 1, 2, 2)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 2, 2)
    assert torch.allclose(x, expected, atol=1e-6)


def test_to_tensor_per_channel_mean_std_by_hand():
    images = np.zeros((2, 3, 1, 1), dtype=np.uint8)
    images[1] = 255
    x = to_tensor(images, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    # sample 0 (all 0): (0 - 0)/1 = 0, (0 - 0.5)/0.5 = -1, (0 - 1)/0.25 = -4
    # sample 1 (all 1): (1 - 0)/1 = 1, (1 - 0.5)/0.5 = 1, (1 - 1)/0.25 = 0
    assert torch.allclose(x.flatten(1), torch.tensor([[0.0, -1.0, -4.0], [1.0, 1.0, 0.0]]), atol=1e-6)


def test_to_tensor_accepts_non_contiguous_input():
    images = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)[:, :, :, ::2]  # a strided view
    x = to_tensor(images, mean=(0.0,), std=(1.0,))
    assert torch.allclose(x * 255, torch.from_numpy(images.astype(np.float32)), atol=1e-4)


# -- augment_batch --------------------------------------------------------------------------

# [[1, 2], [3, 4]] padded by 1 with replicated borders is
#   1 1 2 2
#   1 1 2 2
#   3 3 4 4
#   3 3 4 4
# and the 9 crops (dy, dx in 0..2) are, row-major:
CROPS = [
    [[1, 1], [1, 1]], [[1, 2], [1, 2]], [[2, 2], [2, 2]],
    [[1, 1], [3, 3]], [[1, 2], [3, 4]], [[2, 2], [4, 4]],
    [[3, 3], [3, 3]], [[3, 4], [3, 4]], [[4, 4], [4, 4]],
]
# flipped horizontally, three of them are new: [[2,1],[2,1]], [[2,1],[4,3]], [[4,3],[4,3]] -> 12 distinct
FLIPPED = [[row[::-1] for row in crop] for crop in CROPS]
ALL_CROPS = {str(c) for c in CROPS + FLIPPED}


def test_augment_pad1_gives_only_the_hand_listed_crops():
    assert len(ALL_CROPS) == 12
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(300, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape
    seen = {str(sample[0].int().tolist()) for sample in out}
    assert seen <= ALL_CROPS  # every output is a crop of the padded image, maybe flipped
    assert seen == ALL_CROPS  # and with 300 draws every one of the 12 occurs
    assert torch.equal(x, torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(300, 1, 1, 1))  # input intact


def test_augment_pad0_is_identity_or_flip():
    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4).repeat(20, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(1), pad=0)
    flipped = [bool(torch.equal(o, xi.flip(2))) for o, xi in zip(out, x)]
    same = [bool(torch.equal(o, xi)) for o, xi in zip(out, x)]
    assert all(f != s for f, s in zip(flipped, same))  # exactly one of the two, never anything else
    assert 0 < sum(flipped) < len(x)  # some samples flipped, some not


def _candidates(sample: np.ndarray, pad: int):
    c, h, w = sample.shape
    padded = np.pad(sample, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    for dy, dx, flip in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
        crop = padded[:, dy:dy + h, dx:dx + w]
        yield (dy, dx, flip), (crop[:, :, ::-1] if flip else crop)


def test_augment_pad2_each_sample_is_one_shifted_copy_of_itself():
    n, c, h, w = 64, 2, 5, 6
    # every pixel of every sample has a distinct value, so a match identifies the crop
    x = torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == (n, c, h, w)
    chosen = []
    for i in range(n):
        matches = [key for key, cand in _candidates(x[i].numpy(), 2) if np.array_equal(cand, out[i].numpy())]
        assert len(matches) == 1, f"sample {i} is not a (flipped) crop of its padded input"
        chosen.append(matches[0])
        # all values come from this sample (its own pixels or replicated border)
        assert set(out[i].flatten().tolist()) <= set(x[i].flatten().tolist())
    offsets = {(dy, dx) for dy, dx, _ in chosen}
    flips = {flip for _, _, flip in chosen}
    assert flips == {False, True}
    assert len(offsets) > 10  # 25 possible offsets; 64 samples land on many of them


def test_augment_is_reproducible_with_the_generator_seed():
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# -- predict and accuracy ---------------------------------------------------------------------

LOGITS = torch.tensor([
    [0.1, 0.9, 0.0],  # argmax 1
    [0.8, 0.1, 0.1],  # argmax 0
    [0.2, 0.3, 0.5],  # argmax 2
    [0.6, 0.3, 0.1],  # argmax 0
    [0.0, 0.1, 0.9],  # argmax 2
])
LABELS = torch.tensor([1, 0, 2, 1, 2])  # 4 of 5 right (sample 3 is wrong) -> 80 %


def echo_model():
    """Returns its input as logits in eval mode; Dropout(p=1) zeros everything in train mode."""
    return nn.Sequential(nn.Dropout(p=1.0))


@pytest.mark.parametrize("batch_size", [1, 2, 5, 1024])
def test_predict_is_batched_in_eval_mode(batch_size):
    model = echo_model().train()
    out = predict(model, LOGITS, batch_size=batch_size)
    assert torch.equal(out, LOGITS)  # eval mode: dropout off (train mode would give zeros)
    assert model.training is True  # mode restored
    assert not out.requires_grad


def test_accuracy_by_hand():
    assert accuracy(echo_model(), LOGITS, LABELS) == pytest.approx(80.0)
    assert accuracy(echo_model(), LOGITS, torch.tensor([1, 0, 2, 0, 2])) == pytest.approx(100.0)
    assert accuracy(echo_model(), LOGITS, torch.tensor([0, 1, 0, 1, 0])) == pytest.approx(0.0)


def test_accuracy_of_empty_set_is_nan():
    assert math.isnan(accuracy(echo_model(), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))


# -- optimizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_make_optimizer_no_decay_on_biases_and_norms(name, cls):
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    opt = make_optimizer(model, TrainConfig(optimizer=name, lr=0.1, weight_decay=0.01))
    assert isinstance(opt, cls)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(3, 2)]  # only the Linear weight
    assert len(no_decay["params"]) == 3  # Linear bias, BN weight, BN bias
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == 0.1
    if name == "sgd":
        assert decay["momentum"] == 0.9 and decay["nesterov"] is True


# -- fit -----------------------------------------------------------------------------------------




def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


CFG = TrainConfig(epochs=4, batch_size=16, lr=0.05, weight_decay=0.0, augment=False)


def test_fit_learns_a_linearly_separable_problem(separable):
    model = linear_model()
    start = accuracy(model, separable["val_x"], separable["val_y"])
    result = fit(model, cross_entropy_step(model), TrainData.of(**separable), CFG, RunOptions(progress=False))
    assert isinstance(result, FitResult)
    assert result.best_val_top1 >= 95.0 > start
    assert accuracy(model, separable["val_x"], separable["val_y"]) == result.best_val_top1
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3, 4]
    assert set(result.epochs[0]) == {"epoch", "loss", "train_top1", "val_top1", "seconds"}
    assert 1 <= result.best_epoch <= 4
    assert result.epochs[result.best_epoch - 1]["val_top1"] == result.best_val_top1
    assert result.seconds > 0 and result.images_per_second > 0


def test_fit_is_deterministic_with_a_seed(separable):
    # augment on: the seed drives the shuffling and the crops/flips
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, weight_decay=0.0, augment=True)
    data = {k: (v.view(-1, 1, 1, 2) if k.endswith("_x") else v) for k, v in separable.items()}  # NCHW 1x1x2

    def train(seed):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
        fit(model, cross_entropy_step(model), TrainData.of(**data), cfg, RunOptions(seed=seed, progress=False))
        return model[1].weight.detach().clone()

    assert torch.equal(train(11), train(11))
    assert not torch.equal(train(11), train(12))


def test_fit_keeps_the_best_epoch_weights(separable):
    """Epochs 1-2 learn the labels, epochs 3-8 learn them flipped: the final weights are
    bad, so fit must restore the best epoch's."""
    model = linear_model()
    steps_per_epoch = 128 // 16  # = 8
    calls = {"n": 0}

    def sabotaged_step(images, labels, _index):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch:
            labels = 1 - labels
        logits = model(images)
        return nn.functional.cross_entropy(logits, labels), logits

    cfg = TrainConfig(epochs=8, batch_size=16, lr=0.1, weight_decay=0.0, augment=False)
    result = fit(model, sabotaged_step, TrainData.of(**separable), cfg, RunOptions(progress=False))
    snapshots = [e["val_top1"] for e in result.epochs]
    assert calls["n"] == 8 * steps_per_epoch
    assert result.best_epoch in (1, 2)
    assert snapshots[-1] < 50.0 < result.best_val_top1  # the last epoch learnt the flipped labels
    assert result.best_val_top1 == max(snapshots)
    assert accuracy(model, separable["val_x"], separable["val_y"]) == result.best_val_top1


def test_fit_zero_epochs_keeps_weights(separable):
    model = linear_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, cross_entropy_step(model), TrainData.of(**separable), TrainConfig(epochs=0, augment=False),
                 RunOptions(progress=False))
    assert result.epochs == [] and result.best_epoch == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_skips_single_sample_batches(separable):
    # 17 samples with batch 8: batches of 8, 8 and 1; the last is skipped (batch norm cannot train on 1)
    model = linear_model()
    sizes = []

    def step(images, labels, _index):
        sizes.append(len(images))
        logits = model(images)
        return nn.functional.cross_entropy(logits, labels), logits

    data = dict(separable, train_x=separable["train_x"][:17], train_y=separable["train_y"][:17])
    fit(model, step, TrainData.of(**data), TrainConfig(epochs=1, batch_size=8, augment=False),
        RunOptions(progress=False))
    assert sizes == [8, 8]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_training_diverged(separable, bad):
    model = linear_model()

    def step(images, labels, _index):
        logits = model(images)
        return (logits.sum() * 0 + bad), logits

    with pytest.raises(TrainingDiverged) as info:
        fit(model, step, TrainData.of(**separable), TrainConfig(epochs=2, batch_size=16, lr=0.05, augment=False),
            RunOptions(desc="teacher", progress=False))
    assert info.value.exit_code == 4
    message = str(info.value)
    assert "epoch 1" in message and "teacher.lr" in message and str(bad) in message
