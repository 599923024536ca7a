"""Tests for edgekd.train.semi_supervised (FixMatch for the teacher): the strong view by hand,
the step's loss and pseudo-labels, training on images told apart by brightness with most
labels removed, resume equal to an uninterrupted run, and the recipe's checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekd.data.unlabeled import UNLABELED
from edgekd.distill.schemes import StudentWithEma
from edgekd.errors import ConfigError
from edgekd.train.config import SemiSupervisedConfig, TeacherConfig
from edgekd.train.plumbing import RunOptions, TrainData
from edgekd.train.semi_supervised import Stats, fixmatch_step, strong_augment, train_semi_supervised


def brightness_data(n: int = 240, labeled_per_class: int = 4, seed: int = 0):
    """Grey 8x8 images of 3 classes told apart by brightness (normalized), with all but
    `labeled_per_class` labels per class of the train images removed."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (y.view(n, 1, 1, 1).float() - 1) * 1.2 + 0.4 * torch.randn(n, 1, 8, 8, generator=g)
    train_x, train_y, val_x, val_y = x[:180], y[:180].clone(), x[180:], y[180:]
    keep = torch.zeros(180, dtype=torch.bool)
    for label in range(3):
        keep[torch.nonzero(train_y == label).flatten()[:labeled_per_class]] = True
    train_y[~keep] = UNLABELED
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def teacher_cfg(**semi):
    return TeacherConfig(arch="tinycnn", epochs=3, batch_size=32, lr=0.02, augment=True,
                         semi_supervised=SemiSupervisedConfig(**{"labeled_batch": 8, **semi}))


def test_strong_view_cuts_out_a_square_and_is_drawn_from_the_generator():
    x = torch.ones(5, 1, 10, 10)
    first = strong_augment(x, torch.Generator().manual_seed(3))
    again = strong_augment(x, torch.Generator().manual_seed(3))
    assert first.shape == x.shape and torch.equal(first, again)
    for image in first[:, 0]:
        holes = image == 0
        assert 0 < int(holes.sum()) <= 4 * 4  # a square of side 0.4 * 10, maybe partly outside the image
        rows, cols = torch.nonzero(holes, as_tuple=True)
        assert int(holes.sum()) == (int(rows.max() - rows.min()) + 1) * (int(cols.max() - cols.min()) + 1)
        level = image[~holes].unique()  # the rest: one contrast factor per image, within 1 +- 0.4
        assert len(level) == 1 and 0.6 <= float(level) <= 1.4


def test_step_with_no_unlabeled_weight_is_the_labeled_cross_entropy():
    data = brightness_data()
    pair = StudentWithEma(small_cnn())
    labeled = data["train_y"] != UNLABELED
    cfg = SemiSupervisedConfig(labeled_batch=6, unlabeled_weight=0.0)
    step = fixmatch_step(pair, data["train_x"][labeled], data["train_y"][labeled], cfg, seed=0, stats=Stats())
    index = torch.arange(20)
    loss, logits = step(data["train_x"][index], data["train_y"][index], index)
    assert logits.shape == (20, 3)  # the loop's batch, strongly augmented
    # the same draws by hand: the labeled batch's cross-entropy alone
    from edgekd.train.augment import augment_batch

    g = torch.Generator().manual_seed(0 * 1_000_003 + 0 * 1_009 + 19)
    picks = torch.randint(int(labeled.sum()), (6,), generator=g)
    images = augment_batch(data["train_x"][labeled][picks], g)
    pair.student.eval()  # batch-norm in eval: the by-hand forward must not depend on the batch
    step_eval = fixmatch_step(pair, data["train_x"][labeled], data["train_y"][labeled], cfg, seed=0, stats=Stats())
    loss_eval, _ = step_eval(data["train_x"][index], data["train_y"][index], index)
    expected = F.cross_entropy(pair.student(images), data["train_y"][labeled][picks])
    assert torch.allclose(loss_eval, expected, atol=1e-5)
    assert torch.isfinite(loss)


def test_confident_predictions_become_labels_and_labeled_images_keep_theirs():
    """With a moving average that predicts class 2 with certainty, every unlabeled image is
    pseudo-labeled 2 (threshold met) and a labeled one keeps its label: the consistency term
    is the cross-entropy against those targets."""
    data = brightness_data()
    model = small_cnn()
    pair = StudentWithEma(model)
    with torch.no_grad():  # the average: bias only, class 2 by a mile
        last = pair.ema[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    labeled = data["train_y"] != UNLABELED
    stats = Stats()
    step = fixmatch_step(pair, data["train_x"][labeled], data["train_y"][labeled],
                         SemiSupervisedConfig(labeled_batch=4, threshold=0.9), seed=0, stats=stats)
    labels = torch.full((10,), UNLABELED)
    labels[0] = 1
    index = torch.arange(10)
    step(data["train_x"][index], labels, index)
    assert stats.unlabeled == 9 and stats.confident == 9 and stats.fraction() == 1.0
    stats_none = Stats()
    pair_unsure = StudentWithEma(small_cnn())
    with torch.no_grad():
        pair_unsure.ema[-1].weight.zero_()
        pair_unsure.ema[-1].bias.zero_()  # uniform: never confident
    step_unsure = fixmatch_step(pair_unsure, data["train_x"][labeled], data["train_y"][labeled],
                                SemiSupervisedConfig(labeled_batch=4, threshold=0.9), seed=0, stats=stats_none)
    step_unsure(data["train_x"][index], labels, index)
    assert stats_none.confident == 0 and stats_none.fraction() == 0.0


def test_teacher_learns_from_unlabeled_images_and_reports_it():
    data = brightness_data()
    model, result, record = train_semi_supervised(small_cnn(), TrainData.of(**data),
                                                  teacher_cfg(threshold=0.8, ema_decay=0.9),
                                                  RunOptions(seed=0, desc="teacher", progress=False))
    assert record["method"] == "fixmatch" and record["continues"] in ("model", "ema")
    assert 0 < record["pseudo_labeled_fraction"] <= 1
    assert max(record["model_val_top1"], record["ema_val_top1"]) >= 90  # brightness: easy once labeled
    assert all(p.requires_grad for p in model.parameters())  # later stages may fine-tune it
    assert len(result.epochs) == 3


def test_resume_ends_like_an_uninterrupted_run(tmp_path):
    data = brightness_data()
    common = RunOptions(seed=1, desc="teacher", progress=False, resume=True)
    done, _, record = train_semi_supervised(small_cnn(), TrainData.of(**data), teacher_cfg(), common)

    class Stop(Exception):
        pass

    calls = {"n": 0}
    original = nn.Sequential.forward

    def stop_in_epoch_two(self, x):  # 180 images / 32: 6 steps an epoch, each with 2 forward passes
        calls["n"] += 1
        if calls["n"] > 2 * 6 + 3:
            raise Stop
        return original(self, x)

    checkpoint = tmp_path / "teacher.ckpt"
    nn.Sequential.forward = stop_in_epoch_two
    try:
        with pytest.raises(Stop):
            train_semi_supervised(small_cnn(), TrainData.of(**data), teacher_cfg(), common.with_(checkpoint=checkpoint))
    finally:
        nn.Sequential.forward = original
    resumed, _, record_resumed = train_semi_supervised(small_cnn(), TrainData.of(**data), teacher_cfg(),
                                                       common.with_(checkpoint=checkpoint))
    assert record_resumed["continues"] == record["continues"]
    for a, b in zip(done.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_streamed_or_label_free_data_is_refused_in_one_line():
    data = brightness_data()
    with pytest.raises(ConfigError, match="in memory"):
        streamed = TrainData(SimpleNamespace(labels=data["train_y"]), TrainData.of(**data).val)  # not a tensor
        train_semi_supervised(small_cnn(), streamed, teacher_cfg(), RunOptions(desc="teacher", progress=False))
    no_labels = {**data, "train_y": torch.full_like(data["train_y"], UNLABELED)}
    with pytest.raises(ConfigError, match="at least 2 labeled"):
        train_semi_supervised(small_cnn(), TrainData.of(**no_labels), teacher_cfg(),
                              RunOptions(desc="teacher", progress=False))


@pytest.mark.parametrize("key,value,message", [
    ("threshold", 0, "threshold must be in (0, 1]"),
    ("threshold", 1.5, "threshold must be in (0, 1]"),
    ("labeled_batch", 1, "labeled_batch must be at least 2"),
    ("unlabeled_weight", -1, "unlabeled_weight must be >= 0"),
    ("ema_decay", 1.0, "ema_decay must be in [0, 1)"),
])
def test_recipe_refuses_bad_semi_supervised_values(key, value, message):
    from edgekd.recipe import Recipe

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Recipe.from_dict({"teacher": {"semi_supervised": {key: value}}})


def test_recipe_refuses_semi_supervised_with_an_onnx_or_transferred_teacher(tmp_path):
    from edgekd.recipe import Recipe

    onnx = tmp_path / "t.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ConfigError, match="semi_supervised trains the teacher"):
        Recipe.from_dict({"teacher": {"onnx": str(onnx), "semi_supervised": {}}})
    recipe = Recipe.from_dict({"teacher": {"semi_supervised": {"threshold": 0.9}}})
    assert recipe.teacher.semi_supervised == SemiSupervisedConfig(threshold=0.9)
