"""`edgekd export` options for models edgekd did not train: labels, fp16, input size, pruned weights."""

from __future__ import annotations

import onnx
import torch
from click.testing import CliRunner

from edgekd.cli import main


def _weights(path, width=4):
    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    save_weights(build_model("tinycnn", in_channels=1, num_classes=10, width=width), path)
    return path


def run(*args):
    return CliRunner().invoke(main, ["export", "--onnx", *map(str, args), "--no-progress"])


def test_user_weights_get_the_labels_and_precision_asked_for(tmp_path):
    weights = _weights(tmp_path / "vendor.safetensors")
    out = tmp_path / "vendor.onnx"
    result = run("--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", "--stage", "teacher",
                 "--name", "vendor-net", "--fp16", "--fp32-io", "--dynamic-hw", "-o", out)
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["edgekd.stage"] == "teacher" and meta["edgekd.name"] == "vendor-net"
    assert meta["edgekd.precision"].startswith("fp16")
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]


def test_input_size_and_bad_combinations(tmp_path):
    weights = _weights(tmp_path / "w.safetensors")
    out = tmp_path / "big.onnx"
    result = run("--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", "--input-size", "32,40",
                 "-o", out)
    assert result.exit_code == 0, result.output
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 32, 40]
    for bad in (["--fp32-io"], ["--int8", "--fp16"], ["--input-size", "1,x"]):
        result = run("--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", *bad,
                     "-o", tmp_path / "x.onnx")
        assert result.exit_code == 2 and not (tmp_path / "x.onnx").exists(), (bad, result.output)


def test_pruned_weights_without_the_runs_shapes_explain_themselves(tmp_path):
    weights = _weights(tmp_path / "pruned.safetensors", width=2)  # smaller layers than a fresh tinycnn-4
    (tmp_path / "pruned.shapes.json").write_text("{}")
    result = run("--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", "-o", tmp_path / "p.onnx")
    assert result.exit_code == 2
    assert "pruned model's weights" in result.output and "edgekd export RUN_DIR" in result.output
