"""Label-scarce distillation through `edgekd compress` on a tiny run: 4 labels per class kept
(data.labels_per_class) plus unlabeled images from an .npz (data.unlabeled). The teacher learns
from the 12 labeled images, the student (and pruning's KD fine-tuning) from all of them, the
student alone (distill.baseline) from the 12 repeated; the report says so, and a resumed run
keeps the comparison. Bad values are refused in one line, exit 2, with no run directory."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from clitools import refused
from edgekd.cli import main

SCARCE = ["data.labels_per_class=4", "distill.baseline=true", "distill.augment=true", "prune.enabled=true",
          "prune.importance=taylor", "prune.ratio=0.25", "prune.round_to=1", "prune.epochs=1"]


def unlabeled_npz(folder, n: int = 30, shape=(8, 8)):
    """n images without labels, (N, H, W) grey or (N, H, W, C)."""
    images = np.random.default_rng(7).integers(0, 180, (n, *shape)).astype(np.uint8)
    np.savez(folder / "unlabeled.npz", x=images)
    return folder / "unlabeled.npz"


def test_label_scarce_distillation_end_to_end_and_resumed(tiny_run_inputs, tmp_path):
    from edgekd.pipeline.chain import compress
    from edgekd.pipeline.runstate import load_progress, save_progress
    from edgekd.recipe import Recipe

    recipe = Recipe.from_yaml(tiny_run_inputs / "tiny.yaml", [*SCARCE, f"data.unlabeled={unlabeled_npz(tmp_path)}"])
    run_dir = tmp_path / "run"
    report = compress(recipe, run_dir, progress=False, log=lambda line: None)
    stages = report["stages"]
    train = stages["data"]["train"]  # 135 of the 150 images after val, plus the 30 unlabeled ones
    assert train == 135 + 30 and stages["data"]["labeled"] == 12 and stages["data"]["unlabeled"] == train - 12
    assert stages["teacher"]["images"] == {"labeled": 12, "unlabeled": 0}
    assert stages["teacher"]["images_per_epoch"] == train  # the 12 repeated: an epoch as long as the student's
    assert stages["distill"]["images"] == stages["prune"]["images"] == {"labeled": 12, "unlabeled": train - 12}
    alone = stages["distill"]["baseline"]
    assert alone["images"] == {"labeled": 12, "unlabeled": 0} and alone["images_per_epoch"] == train
    assert alone["steps"] == stages["distill"]["steps"]
    assert isinstance(stages["distill"]["gain_points"], float) and report["student_alone"]["top1"] is not None
    text = (run_dir / "report.md").read_text()
    assert "## Labels" in text and f"| distill | 12 | {train - 12} |" in text and "| teacher | 12 | 0 |" in text

    # stopped after the distill stage: the resumed run keeps the baseline's result, without training it again
    state = load_progress(run_dir, tuple(stages) + ("report",))
    save_progress(run_dir, {k: v for k, v in state["done"].items() if k in ("data", "teacher", "distill")},
                  torch_rng=state.get("torch_rng"))
    lines = []
    resumed = compress(recipe, run_dir, resume=True, progress=False, log=lines.append)
    assert "[distill] done in an earlier run; skipped" in lines
    assert resumed["student_alone"] == report["student_alone"]


def test_semi_supervised_teachers_learn_from_every_train_image(tiny_run_inputs, tmp_path):
    """teacher.semi_supervised (FixMatch), for the teacher and an extra one: each learns from the
    labeled and the unlabeled images, and the record says how many got a pseudo-label."""
    from edgekd.pipeline.chain import compress
    from edgekd.recipe import Recipe

    semi = "{threshold: 0.5, labeled_batch: 8}"
    recipe = Recipe.from_yaml(tiny_run_inputs / "tiny.yaml", [
        "data.labels_per_class=4", "distill.baseline=true", f"teacher.semi_supervised={semi}",
        f"distill.extra_teachers=[{{arch: tinycnn, arch_args: {{width: 4}}, epochs: 1, semi_supervised: {semi}}}]"])
    report = compress(recipe, tmp_path / "run", progress=False, log=lambda line: None)
    stages = report["stages"]
    train = stages["data"]["train"]
    for record in (stages["teacher"], stages["teacher"]["extra_teachers"][0]):
        assert record["images"] == {"labeled": 12, "unlabeled": train - 12} and "images_per_epoch" not in record
        details = record["semi_supervised"]
        assert details["method"] == "fixmatch" and details["threshold"] == 0.5
        assert 0 <= details["pseudo_labeled_fraction"] <= 1 and details["continues"] in ("model", "ema")
    text = (tmp_path / "run" / "report.md").read_text()
    assert f"| teacher | 12 | {train - 12} |" in text and "The teacher learns from every train image" in text


def test_the_labeled_images_are_repeated_only_for_a_supervised_teacher(tiny_run_inputs, tmp_path):
    """The teacher stage's `data` are the labeled images repeated to the train split's size
    (a supervised teacher's epoch); semi-supervised teachers read `every`, so no copy is made."""
    from edgekd.pipeline.chain import _inputs
    from edgekd.pipeline.context import Context
    from edgekd.pipeline.store import RunStore
    from edgekd.recipe import Recipe

    semi = "teacher.semi_supervised={threshold: 0.5}"
    for overrides, labeled_rows in ((["data.labels_per_class=4"], "train"), (["data.labels_per_class=4", semi], 12)):
        recipe = Recipe.from_yaml(tiny_run_inputs / "tiny.yaml", overrides)
        inputs = _inputs("teacher", recipe, RunStore(recipe, Context(run_dir=tmp_path, seed=recipe.seed), {}))
        train = len(inputs.every.train_y)
        assert len(inputs.data.train_y) == (train if labeled_rows == "train" else labeled_rows)
        assert inputs.data.val is inputs.every.val


@pytest.mark.parametrize("case, expected", [
    ("more labels than a class has", "data.labels_per_class 60 is more than the train split holds of class"),
    ("no labels", "data.labels_per_class must be 1 or more"),
    ("missing unlabeled", "does not exist"),
    ("empty unlabeled folder", "has no images"),
    ("unlabeled RGB for grey data", "images have 3 channel(s), the dataset's have 1"),
])
def test_bad_label_scarce_settings_are_refused_before_the_run_directory_exists(tiny_run_inputs, tmp_path, case, expected):
    setting = {"more labels than a class has": "data.labels_per_class=60",
               "no labels": "data.labels_per_class=0",
               "missing unlabeled": f"data.unlabeled={tmp_path / 'nowhere'}",
               "empty unlabeled folder": f"data.unlabeled={tmp_path / 'empty'}",
               "unlabeled RGB for grey data": f"data.unlabeled={unlabeled_npz(tmp_path, 4, (8, 8, 3))}"}[case]
    if case == "empty unlabeled folder":  # beside the run, not around it: a run inside its data is refused
        (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    refused(CliRunner().invoke(main, ["compress", str(tiny_run_inputs / "tiny.yaml"), "--set", setting, "--out", str(out),
                                      "--no-progress"]), expected)
    assert not out.exists()
