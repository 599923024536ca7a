"""The `edgekd` command as a user meets it: one end-to-end run on a reduced recipe, then
bench/export/resume on that run, and the errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.cli import main

REDUCED_RECIPE = """\
name: tiny
seed: 1
data:
  name: fashion-mnist-subset
  limit_train: 1200
  limit_test: 300
  calib_size: 64
teacher:
  arch: tinycnn
  arch_args: {width: 16}
  epochs: 2
  batch_size: 32
  lr: 0.01
  augment: false
distill:
  arch: tinycnn
  arch_args: {width: 8}
  epochs: 2
  batch_size: 32
  lr: 0.01
  augment: true
quantize:
  max_drop: null  # 120 val images: 1 image is 0.83 points, a 1-point budget would be noise
bench:
  warmup: 2
  runs: 20
  min_seconds: 0.0
"""


def edgekd(*args, cwd=None):
    """Run the real command in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    recipe = work / "tiny.yaml"
    recipe.write_text(REDUCED_RECIPE)
    out = work / "run"
    result = edgekd("compress", str(recipe), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    return out


def test_compress_end_to_end(run_dir):
    for name in ("recipe.yaml", "teacher.safetensors", "student.safetensors", "teacher.fp32.onnx",
                 "model.fp32.onnx", "model.int8.onnx", "eval.npz", "report.json", "report.md", "results.csv"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema"] == "edgekd.report/1"
    # teacher first, then the run's models by file name (model.fp32, model.int8)
    assert [m["stage"] for m in report["models"]] == ["teacher", "student", "int8"]
    by_stage = {m["stage"]: m for m in report["models"]}
    # 300 test images, 10 classes: accuracy must be well above chance after two epochs
    for stage in ("teacher", "student", "int8"):
        assert by_stage[stage]["samples"] == 300
        assert by_stage[stage]["top1"] > 30.0
        assert by_stage[stage]["top1"] <= by_stage[stage]["top5"] <= 100.0  # 10 classes: top-5 defined
        for key in ("p50", "p90", "p99"):
            assert by_stage[stage]["latency_ms"][key] > 0
    # int8 really runs as int8: fused integer kernels after ONNX Runtime's optimization
    assert by_stage["int8"]["int8_ops"] > 0
    assert by_stage["student"]["int8_ops"] == 0
    # int8 weights: the file shrinks (a tiny model carries fixed overhead, so not the full 4x)
    assert by_stage["int8"]["file_bytes"] < by_stage["student"]["file_bytes"]
    # the student is smaller than the teacher: width 8 vs 16
    assert by_stage["student"]["params"] < by_stage["teacher"]["params"]
    # fp32 parity checked at two batch sizes other than the export example's
    for stage in ("teacher", "student"):
        diffs = report["stages"]["export"][stage]["max_abs_diff"]
        assert set(diffs) == {"1", "7"} and max(diffs.values()) <= 1e-4
    # eval.npz is the portable test split: uint8 images + labels
    with np.load(run_dir / "eval.npz", allow_pickle=False) as f:
        assert f["x"].dtype == np.uint8 and f["x"].shape == (300, 1, 28, 28)
        assert f["y"].shape == (300,)


def test_bench_run_dir_json_matches_compress(run_dir):
    result = edgekd("bench", str(run_dir), "--json", "--no-progress", "--runs", "10", "--min-seconds", "0")
    assert result.returncode == 0, result.stderr
    bench = json.loads(result.stdout)
    assert bench["schema"] == "edgekd.bench/1"
    report = json.loads((run_dir / "report.json").read_text())
    expected = {m["name"]: m["top1"] for m in report["models"]}
    got = {m["name"]: m["top1"] for m in bench["models"]}
    assert got == expected  # same eval set, same ONNX Runtime: identical accuracy
    for m in bench["models"]:
        for key in ("name", "stage", "top1", "params", "macs", "file_bytes", "provider", "batch_size"):
            assert key in m
        assert m["latency_ms"]["p50"] <= m["latency_ms"]["p90"] <= m["latency_ms"]["p99"]


def test_export_run_stage_fp32_and_int8(run_dir, tmp_path):
    out = tmp_path / "teacher.onnx"
    result = edgekd("export", str(run_dir), "--onnx", "--stage", "teacher", "-o", str(out))
    assert result.returncode == 0, result.stderr
    diffs = [float(line.rsplit("=", 1)[1]) for line in result.stdout.splitlines() if "max |onnx - torch|" in line]
    assert len(diffs) == 2 and max(diffs) <= 1e-4  # two batch sizes, fp32 within 1e-4
    assert out.is_file()
    # exporting again to the same file is refused, the file untouched
    before = out.read_bytes()
    again = edgekd("export", str(run_dir), "--onnx", "--stage", "teacher", "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before

    int8 = tmp_path / "student.int8.onnx"
    result = edgekd("export", str(run_dir), "--onnx", "--int8", "-o", str(int8), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "agreement" in result.stdout
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_export_weights_plus_arch(run_dir, tmp_path):
    out = tmp_path / "w.onnx"
    result = edgekd("export", "--onnx", "--weights", str(run_dir / "student.safetensors"), "--arch", "tinycnn",
                    "--arch-args", "{width: 8}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    wrong = edgekd("export", "--onnx", "--weights", str(run_dir / "student.safetensors"), "--arch", "tinycnn",
                   "--arch-args", "{width: 16}", "-o", str(tmp_path / "x.onnx"))
    assert wrong.returncode == 2
    assert "shape mismatch" in wrong.stderr and "features.0.0.weight" in wrong.stderr


def test_resume_skips_completed_stages(run_dir):
    before = (run_dir / "student.safetensors").read_bytes()
    result = edgekd("compress", "--resume", str(run_dir), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("done in an earlier run; skipped") == 8  # every stage, prune included
    assert (run_dir / "student.safetensors").read_bytes() == before


def test_existing_run_dir_is_refused(run_dir):
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    result = CliRunner().invoke(main, ["compress", "--out", str(run_dir)])
    assert result.exit_code == 2
    assert "already exists" in result.output and "--resume" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


# -- bad input: one line, a distinct exit code, no traceback ---------------------------


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_misspelt_recipe_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("teacher:\n  epoch: 3\n")
    result = CliRunner().invoke(main, ["compress", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "teacher.epoch" in line and "bad.yaml" in line
    assert not (tmp_path / "run").exists()


def test_dataset_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["compress", "--data", "fashion-mnist", "--data-path", str(missing),
                                       "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2
    assert str(missing) in one_line_error(result)


def test_onnx_file_that_is_not_onnx(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"this is not a protobuf" * 10)
    result = CliRunner().invoke(main, ["bench", str(fake), "--no-progress"])
    assert result.exit_code == 2
    assert "not a valid ONNX model" in one_line_error(result)


def test_unknown_model_name(tmp_path):
    result = CliRunner().invoke(main, ["compress", "--set", "distill.arch=resnet9", "--out", str(tmp_path / "r"),
                                       "--no-progress"])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "resnet9" in line and "resnet20" in line


@pytest.mark.parametrize("command", [[], ["compress"], ["export"], ["bench"]])
def test_help_explains_every_option(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    group_or_command = main if not command else main.commands[command[0]]
    for param in group_or_command.params:
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        assert param.help, f"option {param.opts} has no help text"
        assert param.opts[-1] in result.output or param.opts[0] in result.output


def test_import_edgekd_and_cli_load_no_torch():
    code = "import sys, edgekd, edgekd.cli, edgekd.runtime.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_run_dir_never_overwrites(tmp_path, monkeypatch):
    from edgekd.pipeline.rundir import new_run_dir

    monkeypatch.chdir(tmp_path)
    first = new_run_dir("default", None, False)
    assert first == Path("runs/default")
    first.mkdir(parents=True)
    assert new_run_dir("default", None, False) == Path("runs/default-2")
