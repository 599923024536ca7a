"""The default `edgekd compress` recipe's int8 student, benched on its own test images written out
as PNG class folders named by its class names: the same pixels reach the model as from the
run's eval.npz, and the classes are the model's own (edgekd.class_names, not sorted folder
names: Fashion-MNIST's order is not alphabetical), so the top-1 is the .npz top-1 exactly.
The same folders under names the model does not know are refused (exit 2) with both lists.

One default run for the module, 2 epochs per training stage (what the checks need is a model
well above chance with the dataset's class names; the full default run takes a minute more)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a default edgekd compress run

FAST = ["--warmup", "0", "--runs", "2", "--min-seconds", "0", "--no-progress"]


def edgekd(*args):
    """The real command in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "edgekd", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=900)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    result = edgekd("compress", "--out", out, "--no-progress", "--set", "teacher.epochs=2", "--set", "distill.epochs=2",
                    "--set", "quantize.max_drop=null")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def class_folders(default_run, tmp_path_factory):
    """(root, eval.npz arrays): root/<class name, '/' as '_'>/<index>.png, one grey PNG per test image."""
    with np.load(default_run / "eval.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("x", "y", "class_names")}
    root = tmp_path_factory.mktemp("folders") / "test"
    folder_names = [str(n).replace("/", "_") for n in arrays["class_names"]]
    for name in folder_names:
        (root / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(arrays["x"], arrays["y"])):
        Image.fromarray(image[0], "L").save(root / folder_names[label] / f"{i:05d}.png")
    return root, arrays


def bench_row(*args) -> dict:
    result = edgekd("bench", *args, "--json", *FAST)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["models"]
    return row


def test_class_folders_score_exactly_the_npz_top1(default_run, class_folders):
    from edgekd.runtime.eval_folder import load_eval_data

    root, arrays = class_folders
    model = default_run / "model.int8.onnx"
    assert list(json.loads(dict(_metadata(model))["edgekd.class_names"])) != sorted(arrays["class_names"])
    # the pixels: the folder's images, decoded for the model, are the eval.npz's, byte for byte
    x, data = load_eval_data(root, [model], None)
    order = [int(p.stem) for name in sorted(p.name for p in root.iterdir()) for p in sorted((root / name).iterdir())]
    np.testing.assert_array_equal(x, arrays["x"][order])
    npz_row, folder_row = bench_row(model, "--data", default_run / "eval.npz"), bench_row(model, "--data", root)
    assert folder_row["samples"] == npz_row["samples"] == len(arrays["y"])
    assert folder_row["top1"] == npz_row["top1"] and folder_row["top5"] == npz_row["top5"]
    assert npz_row["top1"] > 60.0  # a trained model, not chance: the check above compares real numbers
    assert folder_row["notes"] == npz_row["notes"] == []


def test_class_folders_the_model_does_not_know_are_refused_with_both_lists(default_run, class_folders):
    root, arrays = class_folders
    renamed = root.parent / "unknown"
    renamed.mkdir()
    for i, folder in enumerate(sorted(root.iterdir())):
        shutil.copytree(folder, renamed / f"class{i}")  # the same images, under names the model does not know
    result = edgekd("bench", default_run / "model.int8.onnx", "--data", renamed, *FAST)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "folder classes: class0, class1, class2" in line
    assert "model classes: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot" in line


def _metadata(path):
    import onnx

    return [(p.key, p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props]
