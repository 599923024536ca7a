"""Issue 28: a vendor model exports as the README says, without a dataset of its shape.

The README's block after the line `<!-- test: vendor-export -->` is run as written, with a
torchvision resnet18 weights file (random weights, saved locally) as vendor.pt."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import onnx
import pytest
import torch

from clitools import cli, refused
from edgekd.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- test: vendor-export -->"


def marked_block(text: str, marker: str) -> list[list[str]]:
    """The commands of the fenced block right after `marker`: one argv per command
    (backslash continuations joined, comments dropped)."""
    found = re.search(re.escape(marker) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
    assert found, f"README.md has no fenced block after {marker}"
    joined = found.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


def test_the_readme_vendor_export_block_runs_as_written(tmp_path, monkeypatch):
    import torchvision

    commands = marked_block(README.read_text(encoding="utf-8"), MARKER)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), "vendor.pt")
    for argv in commands:
        assert argv[0] == "edgekd", argv
        result = cli(*argv[1:])
        assert result.exit_code == 0, result.output
        assert "no dataset" in result.output and "not for accuracy" in result.output, result.output
    written = [p for p in tmp_path.glob("*.onnx")]
    assert written, "the block wrote no ONNX file"
    model = onnx.load(str(written[0]))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 224, 224]  # the weights' own shape, not the 1-channel subset's
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1000


def _tinycnn(path, in_channels, num_classes):
    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    save_weights(build_model("tinycnn", in_channels=in_channels, num_classes=num_classes, width=4), path)
    return path


def test_weights_of_another_shape_export_without_a_dataset(tmp_path):
    weights = _tinycnn(tmp_path / "rgb5.safetensors", 3, 5)
    common = ["export", "--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", "--no-progress"]
    # a zoo model has no native size: it is asked for, before anything is written
    refused(cli(*common), "--input-size")
    result = cli(*common, "--input-size", "32x40", "--name", "rgb5")
    assert result.exit_code == 0, result.output
    assert "no dataset" in result.output and "3x32x40" in result.output and "5 classes" in result.output
    out = tmp_path / "rgb5.fp32.onnx"  # --name names the output beside the weights
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["edgekd.name"] == "rgb5" and meta["edgekd.input_shape"] == "[3, 32, 40]"
    assert "edgekd.mean" not in meta and "edgekd.preprocess" not in meta  # nothing known about its data
    refused(cli(*common, "--input-size", "32", "--int8", "-o", tmp_path / "q.onnx"), "--int8", "--data")


def test_a_dataset_of_another_shape_names_exports_fix_not_the_recipes(tmp_path):
    weights = _tinycnn(tmp_path / "rgb5.safetensors", 3, 5)
    line = refused(cli("export", "--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}",
                       "--data", "fashion-mnist", "-o", tmp_path / "x.onnx"), "leave out --data")
    assert "teacher.transfer" not in line
    refused(cli("export", "--weights", weights, "--arch", "tinycnn", "--data", "fashion-mnist", "--num-classes",
                "5", "-o", tmp_path / "x.onnx"), "--num-classes")


def test_arch_args_shape_keys_agree_or_are_refused_never_a_type_error(tmp_path):
    from edgekd.data.splitting import DataSpec
    from edgekd.pipeline.context import build_arch

    spec = DataSpec("d", 1, 28, 28, 10, tuple("0123456789"), (0.5,), (0.5,), "test")
    model = build_arch(spec, "tinycnn", {"num_classes": 10, "in_channels": 1, "width": 4})
    assert model.fc.out_features == 10
    with pytest.raises(ConfigError, match="arch_args num_classes: 1000 .* remove it from arch_args"):
        build_arch(spec, "tinycnn", {"num_classes": 1000})
    weights = _tinycnn(tmp_path / "w.safetensors", 1, 10)
    result = cli("export", "--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4, num_classes: 10}",
                 "-o", tmp_path / "w.onnx", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "no dataset" not in result.output  # the default dataset's shape: its images check the parity
    refused(cli("export", "--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4, num_classes: 7}",
                "--num-classes", "5", "-o", tmp_path / "v.onnx"), "disagree")


def test_the_python_api_exports_without_a_dataset_and_says_so(tmp_path):
    import edgekd

    weights = _tinycnn(tmp_path / "grey3.safetensors", 1, 3)
    result = edgekd.export(weights=weights, arch="tinycnn", arch_args={"width": 4}, input_size=(20, 20))
    assert result["no_dataset"] == {"channels": 1, "num_classes": 3, "input_size": [20, 20]}
    assert result["path"] == str(tmp_path / "grey3.fp32.onnx") and "int8_top1_agreement" not in result
    with pytest.raises(ConfigError, match="--num-classes and --in-channels give the shape of --weights"):
        edgekd.export(tmp_path, num_classes=3)
