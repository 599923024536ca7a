"""Every kind of offline knowledge through the whole `edgekd compress` chain, on a tiny
recipe made from the embedded default: 300 training images, one epoch, a tiny bench.

Each run must end with a report whose student is the distilled one, weights that load
into the student architecture (no regressor or hook left in them), and, for multi-teacher,
the extra teacher's weights in the run directory."""

from __future__ import annotations

import json

import pytest

from edgekd.errors import ConfigError
from edgekd.pipeline.chain import compress
from edgekd.recipe import Recipe

TINY = [
    "data.limit_train=300", "data.limit_test=100", "data.calib_size=32",
    "teacher.arch=resnet8", "teacher.arch_args={width: 0.25}", "teacher.epochs=1", "teacher.batch_size=64",
    "distill.arch_args={width: 4}", "distill.epochs=1", "distill.batch_size=64",
    "quantize.max_drop=null", "bench.warmup=1", "bench.runs=5", "bench.min_seconds=0.0", "export.check_batch_sizes=[2]",
]
# TinyCNN width 4: features.2 is 8x14x14, features.4 16x7x7; ResNet-8 width 0.25: layers.1 is 8x14x14,
# layers.2 16x7x7, so FitNets needs no regressor for features.4 -> layers.2 but one for features.2 -> layers.2
KINDS = {
    "kd": ["distill.alpha=0.9"],
    "multi-teacher": ["distill.alpha=0.9", "distill.extra_teachers=[{arch: tinycnn, arch_args: {width: 8}, epochs: 1}]"],
    "fitnet": ["distill.alpha=0.0", "distill.terms=[{kind: fitnet, student: features.2, teacher: layers.2}]"],
    "at": ["distill.alpha=0.0", "distill.terms=[{kind: at, student: [features.2, features.4], teacher: [layers.1, layers.2]}]"],
    "rkd": ["distill.alpha=0.0", "distill.terms=[{kind: rkd}]"],
    "sp": ["distill.alpha=0.0", "distill.terms=[{kind: sp, student: features.4, teacher: layers.2}]"],
    "kd+fitnet": ["distill.alpha=0.9", "distill.augment=true",
                  "distill.terms=[{kind: fitnet, student: features.4, teacher: layers.2, weight: 2.0}]"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_compress_with_each_kind(kind, tmp_path):
    from edgekd.io.artifacts import load_state_dict
    from edgekd.models.zoo import build_model

    recipe = Recipe.default([*TINY, *KINDS[kind]])
    run_dir = tmp_path / "run"
    report = compress(recipe, run_dir, progress=False, log=lambda line: None)

    distilled = report["stages"]["distill"]
    assert distilled["terms"] == [t["kind"] for t in recipe.distill.terms]
    assert distilled["teachers"] == (2 if kind == "multi-teacher" else 1)
    assert 0.0 <= distilled["val_top1"] <= 100.0
    models = {m["stage"]: m for m in report["models"]}
    assert set(models) == {"teacher", "student", "int8"} and models["student"]["samples"] == 100
    # the student's weights are exactly the student architecture's: no regressors
    state = load_state_dict(run_dir / "student.safetensors")
    student = build_model("tinycnn", in_channels=1, num_classes=10, width=4)
    assert set(state) == set(student.state_dict())
    assert models["student"]["params"] == sum(p.numel() for p in student.parameters())
    # the resolved recipe in the run directory keeps the terms with their defaults filled in
    saved = Recipe.from_yaml(run_dir / "recipe.yaml")
    assert saved.distill.terms == recipe.distill.terms
    if kind == "multi-teacher":
        extra = report["stages"]["teacher"]["extra_teachers"]
        assert [e["weights"] for e in extra] == ["teacher.extra1.safetensors"]
        assert set(load_state_dict(run_dir / "teacher.extra1.safetensors")) == set(
            build_model("tinycnn", in_channels=1, num_classes=10, width=8).state_dict())
        assert not list((run_dir / "state").glob("*.ckpt"))  # per-epoch checkpoints removed once done
        resume_after_the_teacher_stage(recipe, run_dir)
    json.dumps(report)  # plain data


def resume_after_the_teacher_stage(recipe, run_dir):
    """As if the run had stopped after the teacher stage: --resume reloads the extra teacher
    from its weights file and distils from both teachers again."""
    from edgekd.pipeline.runstate import load_progress, save_progress

    state = load_progress(run_dir, ("data", "teacher", "distill", "prune", "export", "quantize", "bench", "report"))
    save_progress(run_dir, {k: v for k, v in state["done"].items() if k in ("data", "teacher")},
                  torch_rng=state.get("torch_rng"))
    lines = []
    report = compress(recipe, run_dir, resume=True, progress=False, log=lines.append)
    assert "[teacher] done in an earlier run; skipped" in lines
    assert report["stages"]["distill"]["teachers"] == 2


@pytest.mark.parametrize("override, message", [
    ("distill.terms=[{kind: fitnet, student: layer2, teacher: layers.2}]",
     r"distill.terms\[0\] \(fitnet\) student tinycnn: layer 'layer2' not found in TinyCNN; valid names: features, "),
    ("distill.terms=[{kind: at, student: features.2, teacher: layers.9}]", r"layer 'layers.9' not found in CifarResNet"),
    ("distill.terms=[{kind: hint}]", r"unknown distill.terms\[0\].kind 'hint'; available: fitnet, at, sp, rkd"),
    ("distill.terms=[{kind: sp, student: features.4, teacher: layers.2, weight: -3}]", r"weight must be a number >= 0"),
    ("distill.extra_teachers=[{arch: resnet8, weights: /nonexistent.safetensors}]", r"does not exist"),
])
def test_bad_terms_fail_before_anything_is_written(override, message, tmp_path):
    from edgekd.errors import ModelFileError

    run_dir = tmp_path / "run"
    with pytest.raises((ConfigError, ModelFileError), match=message):
        compress(Recipe.default([*TINY, override]), run_dir, progress=False, log=lambda line: None)
    assert not run_dir.exists()
