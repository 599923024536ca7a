"""Every recipe value a later stage reads is checked before the run directory exists (issue
25, "validated late" and the recipe values of "bad input reported as something else").

Quantize node names and op types (against the student's own graph, exported and
pre-processed as the stages do), bench's session config (a session on a one-node model), a
semi-supervised teacher with streamed data, the size of the validation split (what the
int8 budget needs), and float32-representable numbers. Every refusal is exit 2 with one
line, and no run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clitools import TINY_RECIPE, cli, refused


def images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.integers(0, 60, (n, 1, 8, 8)) + y[:, None, None, None] * 60).astype(np.uint8)
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """tiny.npz: 120 train images of 3 classes (12 of them val at the default 0.1), 30 test."""
    folder = tmp_path_factory.mktemp("inputs")
    (tx, ty), (sx, sy) = images(120, 0), images(30, 1)
    np.savez(folder / "tiny.npz", train_x=tx, train_y=ty, test_x=sx, test_y=sy)
    (folder / "tiny.yaml").write_text(TINY_RECIPE.format(data=folder / "tiny.npz"))
    return folder


def compress_refused(work: Path, tmp_path: Path, *settings: str, expected=()) -> str:
    """`edgekd compress tiny.yaml --set ...` is refused, in one line, and creates no run directory."""
    out = tmp_path / "run"
    args = [a for s in settings for a in ("--set", s)]
    line = refused(cli("compress", work / "tiny.yaml", *args, "--out", out, "--no-progress"), *expected)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    return line


# -- quantize.exclude_op_types / exclude_nodes: against the student's own graph -----------------------


@pytest.mark.parametrize("op, expected", [
    ("NoSuchOp", ["'NoSuchOp' is not an ONNX operator", "Conv, Flatten, Gemm"]),
    ("conv", ["did you mean Conv?"]),
    ("Sigmoid", ["the model has no Sigmoid node", "Relu"]),
])
def test_an_op_type_the_model_lacks_is_refused_before_the_run(work, tmp_path, op, expected):
    compress_refused(work, tmp_path, f"quantize.exclude_op_types=[{op}]",
                     expected=["quantize.exclude_op_types", *expected])


def test_a_node_name_the_model_lacks_is_refused_before_training(work, tmp_path):
    compress_refused(work, tmp_path, "quantize.exclude_nodes=[/features/conv_typo]", expected=[
        "quantize.exclude_nodes", "'/features/conv_typo'", "/features/features.0/features.0.0/Conv", "/fc/Gemm"])


def test_a_node_name_is_refused_before_training_with_pruning_too(work, tmp_path):
    compress_refused(work, tmp_path, "quantize.exclude_nodes=[nope]", "prune.enabled=true", "prune.epochs=1",
                     "prune.batch_size=32", expected=["quantize.exclude_nodes", "'nope'", "/fc/Gemm"])


def test_names_preflight_accepts_are_the_names_the_trained_pruned_student_has(work, tmp_path):
    import json

    conv = "/features/features.2/features.2.0/Conv"
    args = ["--set", f"quantize.exclude_nodes=[{conv}]", "--set", "quantize.exclude_op_types=[Gemm]",
            "--set", "prune.enabled=true", "--set", "prune.epochs=1", "--set", "prune.batch_size=32",
            "--set", "prune.round_to=2"]
    result = cli("compress", work / "tiny.yaml", *args, "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    stages = json.loads((tmp_path / "run" / "report.json").read_text())["stages"]
    assert stages["prune"]["after"]["macs"] < stages["prune"]["before"]["macs"]  # channels were removed
    assert conv in stages["quantize"]["float_nodes"] and "/fc/Gemm" in stages["quantize"]["float_nodes"]


def test_node_names_survive_training_and_pruning(tiny_spec, make_tiny_cnn, tmp_path):
    """Preflight checks the untrained student's names; the stage reads the trained, pruned one's."""
    import onnx
    import torch

    from edgekd.onnx_export import ExportConfig, to_onnx
    from edgekd.prune.channels import PrunePlan, prune_channels
    from edgekd.quant.ptq import prepare

    def names(model, tag):
        fp32, prepared = tmp_path / f"{tag}.onnx", tmp_path / f"{tag}.prepared.onnx"
        to_onnx(model, fp32, input_shape=(1, 8, 8), metadata={}, cfg=ExportConfig(check_batch_sizes=[1]))
        prepare(fp32, prepared)
        return [(n.name, n.op_type) for n in onnx.load(str(prepared)).graph.node]

    untrained = names(make_tiny_cnn(seed=0, width=8), "untrained")
    changed = make_tiny_cnn(seed=1, width=8)
    with torch.no_grad():  # other weights (as after training), then half the channels removed
        for p in changed.parameters():
            p.mul_(3.0)
    prune_channels(changed, PrunePlan(ratio=0.5, round_to=2), input_shape=(1, 8, 8))
    assert sum(p.numel() for p in changed.parameters()) < sum(p.numel() for p in make_tiny_cnn(width=8).parameters())
    assert names(changed, "pruned") == untrained


def test_the_quantize_stage_refuses_an_op_type_it_would_ignore(tiny_onnx, tmp_path, calib_images):
    """The same check in ptq itself (the API, a resumed run): an unknown op type is no silent no-op."""
    from edgekd.errors import ConfigError
    from edgekd.quant.config import QuantConfig
    from edgekd.quant.ptq import ptq

    with pytest.raises(ConfigError, match="'NoSuchOp' is not an ONNX operator"):
        ptq(tiny_onnx[0], tmp_path / "int8.onnx", calib_images=calib_images, progress=False,
            cfg=QuantConfig(exclude_op_types=["NoSuchOp"], target="x86-avx2"))
    assert not (tmp_path / "int8.onnx").exists()


def test_a_calibration_method_this_onnxruntime_lacks_is_refused_before_training(work, tmp_path):
    from edgekd.quant.calibration import CALIBRATORS, Calibrator

    CALIBRATORS.register("future-method", Calibrator(ort_method="FromTheFuture"))
    try:
        compress_refused(work, tmp_path, "quantize.calibration=future-method",
                         expected=["CalibrationMethod.FromTheFuture", "this onnxruntime lacks", "MinMax"])
    finally:
        CALIBRATORS.unregister("future-method")


# -- float32-representable numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("setting, key", [
    ("distill.mixup=1e-50", "distill.mixup"),  # the Dirichlet sampler crashed after the teacher trained
    ("teacher.lr=1e-45", "teacher.lr"),  # 0 in float32: a teacher that never moves
    ("distill.terms=[{kind: at, student: features.2, teacher: features.2, weight: 1.0e-60}]",
     "distill.terms[0].weight"),
    ("data.mean=1.0e-40", "data.mean"),
    ("distill.arch_args={width: 4, scale: 1.0e-50}", "distill.arch_args.scale"),
])
def test_a_positive_number_that_float32_makes_zero_is_refused(work, tmp_path, setting, key):
    compress_refused(work, tmp_path, setting, expected=[key, "float32", "1.18e-38"])


def test_the_float32_rule_is_one_function_for_every_recipe_number():
    from edgekd.configtools import check_float32
    from edgekd.errors import ConfigError
    from edgekd.pipeline.preflight import check_finite_numbers

    for value in (0.0, 1.2e-38, -1.2e-38, 3.0e38, 1e-3, 0):
        check_float32(value, "x")
    for value in (1e-50, -1e-40, 5e-324, 3.5e38, -1e39):
        with pytest.raises(ConfigError, match="float32"):
            check_float32(value, "x")
    with pytest.raises(ConfigError, match=r"bench\.preprocess\.std"):  # untyped values: the preflight walk
        check_finite_numbers({"bench": {"preprocess": {"std": [0.5, 1e-45]}}})


# -- bench.session_config: a session on a one-node model ------------------------------------------------


@pytest.mark.parametrize("entry, expected", [
    ("{session.intra_op_thread_affinities: 'zz'}", "Processor id must consist of only digits"),
    ("{session.dynamic_block_base: 'abc'}", "stoi"),
    ("{optimization.minimal_build_optimizations: 'zz'}", "Invalid value for optimization.minimal_build"),
])
def test_a_session_config_value_onnx_runtime_refuses_is_refused_before_training(work, tmp_path, entry, expected):
    line = compress_refused(work, tmp_path, f"bench.session_config={entry}",
                            expected=["ONNX Runtime refuses bench.session_config", expected])
    assert "re-export" not in line and "teacher.fp32.onnx" not in line


def test_a_provider_not_installed_is_refused_before_training(work, tmp_path):
    compress_refused(work, tmp_path, "bench.provider=qnn", expected=["qnn", "QNNExecutionProvider"])


# -- teacher.semi_supervised with streamed data ---------------------------------------------------------


def test_a_semi_supervised_teacher_on_streamed_data_is_refused_before_the_run(work, tmp_path):
    compress_refused(work, tmp_path, "data.streaming=true", "teacher.semi_supervised={threshold: 0.9}",
                     expected=["teacher.semi_supervised needs the train split in memory", "data.streaming: false"])


# -- the size of the validation split -------------------------------------------------------------------


def test_a_one_image_validation_split_is_refused(work, tmp_path):
    compress_refused(work, tmp_path, "data.val_fraction=0.0001", expected=[
        "validation split has 1 image(s)", "3 classes", "data.val_fraction"])


def test_a_validation_split_too_small_for_the_int8_budget_is_refused_with_the_number(work, tmp_path):
    compress_refused(work, tmp_path, "quantize.max_drop=5.0", expected=[
        "validation split has 12 images", "8.33 top-1 points", "quantize.max_drop 5,", "at least 20 images",
        "data.val_fraction to about 0.17", "quantize.max_drop to 8.34"])
    compress_refused(work, tmp_path, "quantize.max_drop=1.0", expected=["at least 100 images", "use more data"])


def test_a_val_fraction_of_1e_300_is_refused_before_the_run(work, tmp_path):
    compress_refused(work, tmp_path, "data.val_fraction=1e-300", "quantize.max_drop=1.0",
                     expected=["data.val_fraction"])


def test_a_budget_the_val_split_resolves_passes_preflight(work, tmp_path):
    """12 val images resolve a budget of 8.34 points (one image: 8.33), the value the refusal above names."""
    from edgekd.pipeline.context import Context
    from edgekd.pipeline.preflight import preflight
    from edgekd.pipeline.store import RunStore
    from edgekd.quant.budget import min_val_images
    from edgekd.recipe import Recipe

    assert min_val_images(1.0) == 100 and min_val_images(0.5) == 200 and min_val_images(3.0) == 34
    assert min_val_images(None) is None and min_val_images(0.0) is None and min_val_images(-1.0) is None
    recipe = Recipe.from_yaml(work / "tiny.yaml", ["quantize.max_drop=8.34"])
    preflight(recipe, RunStore(recipe, Context(run_dir=tmp_path / "run", seed=0), {}))
    assert not (tmp_path / "run").exists()
