"""The preprocessing flags on `edgekd bench` and `edgekd export`: bad values are one line and
exit 2 before any model is opened; export writes the stated preprocessing into the metadata,
and bench applies it later (checked against PyTorch with torchvision's transforms)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image
from torchvision import transforms

from edgekd.cli import main

FAST = ["--warmup", "0", "--runs", "3", "--min-seconds", "0", "--no-progress"]


def _identity_model(path):
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "flat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("flags, named", [
    (["--mean", "0.5,0.5"], "--mean"), (["--std", "0"], "--std"), (["--std", "0.2,0.2,0"], "--std"),
    (["--mean", "0.1,0.2,0.3", "--std", "0.1,0.2"], "--std"), (["--layout", "NWHC"], "--layout"),
    (["--channel-order", "grb"], "--channel-order"), (["--input-size", "224,0"], "--input-size"),
    (["--input-size", "big"], "--input-size"), (["--scale", "-1"], "--scale"), (["--preprocess", "vgg"], "--preprocess"),
    (["--crop-fraction", "2"], "--crop-fraction"),
])
def test_bad_bench_flags_are_one_line_before_any_session(tmp_path, monkeypatch, flags, named):
    model = _identity_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((2, 3, 2, 2), np.uint8), y=np.zeros(2, np.int64))

    def no_session(*args, **kwargs):
        raise AssertionError("a session was opened")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    result = CliRunner().invoke(main, ["bench", str(model), "--data", str(tmp_path / "eval.npz"), *flags, *FAST])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert named in line and "Traceback" not in line and "a session was opened" not in line


def _weights(path):
    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("tinycnn", in_channels=1, num_classes=10, width=4)
    save_weights(model, path)
    return model.eval()


def _export(*args):
    return CliRunner().invoke(main, ["export", "--onnx", *map(str, args), "--no-progress"])


def test_export_writes_the_stated_preprocessing_and_bench_applies_it(tmp_path):
    net = _weights(tmp_path / "w.safetensors")
    out = tmp_path / "vendor.onnx"
    result = _export("--weights", tmp_path / "w.safetensors", "--arch", "tinycnn", "--arch-args", "{width: 4}",
                     "--input-size", "32,32", "--mean", "0.5", "--std", "0.25", "--crop-fraction", "0.875", "-o", out)
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["edgekd.mean"]) == [0.5] and json.loads(meta["edgekd.std"]) == [0.25]
    steps = json.loads(meta["edgekd.preprocess"])
    assert steps["resize_shorter"] == 36 and steps["center_crop"] == [32, 32] and steps["color"] == "L"
    # images of assorted sizes, filed by what PyTorch predicts with the same preprocessing
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    # the folders are named by the model's classes (edgekd.class_names: the --data's, Fashion-MNIST's)
    names = [n.replace("/", "_") for n in json.loads(meta["edgekd.class_names"])]
    for name in names:
        (folder / name).mkdir(parents=True)
    files = []
    for i in range(24):
        h, w = (int(v) for v in rng.integers(34, 60, 2))
        files.append(folder / names[0] / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    pipeline = transforms.Compose([transforms.Grayscale(1), transforms.Resize(36), transforms.CenterCrop(32),
                                   transforms.ToTensor(), transforms.Normalize([0.5], [0.25])])
    with torch.no_grad():
        predicted = net(torch.stack([pipeline(Image.open(f).convert("RGB")) for f in files])).argmax(1).numpy()
    for f, label in zip(files, predicted):
        f.rename(folder / names[label] / f.name)
    result = CliRunner().invoke(main, ["bench", str(out), "--data", str(folder), "--json", *FAST])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["models"]
    assert row["top1"] == 100.0 and row["samples"] == 24 and row["preprocessing"]["source"] == "edgekd metadata"


@pytest.mark.parametrize("flags, expected", [
    (["--layout", "NHWC"], "NCHW"), (["--preprocess", "imagenet"], "takes 1 channel"), (["--std", "0"], "--std"),
])
def test_export_refuses_what_cannot_describe_the_model(tmp_path, flags, expected):
    _weights(tmp_path / "w.safetensors")
    result = _export("--weights", tmp_path / "w.safetensors", "--arch", "tinycnn", "--arch-args", "{width: 4}",
                     *flags, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and expected in result.output and not (tmp_path / "x.onnx").exists()


def test_export_of_a_run_keeps_the_run_s_preprocessing(tmp_path):
    result = _export(tmp_path / "some-run", "--mean", "0.5")
    assert result.exit_code == 2 and "--weights" in result.output
