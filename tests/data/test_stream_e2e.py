"""`edgekd.compress` end to end on a tiny image folder of mixed JPEG/PNG/WebP/BMP files,
streamed at data.image_size 32, with a bad file skipped (data.skip_bad): the preprocessing
travels in the ONNX metadata and eval.npz, and `edgekd bench` on the device gives the top-1
that PyTorch gives on the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgekd
from imagefiles import write_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-e2e")
    folder = write_folder(root / "images", per_class=12, test_per_class=4)
    bad = sorted((folder / "train").glob("*/*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])  # cut inside its header: unreadable, skipped and counted
    small = {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 2, "batch_size": 8, "lr": 0.01}
    recipe = {
        "name": "tiny-images", "seed": 1,
        "data": {"name": "imagefolder", "path": str(folder), "image_size": 32, "calib_size": 8, "workers": 2,
                 "skip_bad": True},
        "teacher": small,
        "distill": {**small, "augment": False},
        "quantize": {"max_drop": None},
        "bench": {"warmup": 1, "runs": 3, "min_seconds": 0.0},
    }
    report = edgekd.compress(recipe, root / "run")
    return root / "run", report


def test_the_run_streams_and_counts_the_bad_file(run):
    out, report = run
    data = report["stages"]["data"]
    assert data["streaming"] == "files" and data["shape"] == [3, 32, 32]
    assert data["skipped"] == {"train": {"unreadable": 1}}
    assert data["train"] + data["val"] == 3 * 12 - 1 and data["test"] == 12
    assert [m["stage"] for m in report["models"]] == ["teacher", "student", "int8"]
    assert all(m["top1"] is not None for m in report["models"])
    assert not list((out / "state").glob("*.ckpt"))


def test_preprocessing_travels_in_metadata_and_eval_set(run):
    import onnx

    out, _ = run
    meta = {p.key: p.value for p in onnx.load(str(out / "model.fp32.onnx")).metadata_props}
    steps = json.loads(meta["edgekd.preprocess"])
    assert steps["resize_shorter"] == 37 and steps["center_crop"] == [32, 32] and steps["color"] == "RGB"
    assert steps["interpolation"] == "bilinear" and steps["mean"] == json.loads(meta["edgekd.mean"])
    with np.load(out / "eval.npz") as data:
        assert data["x"].shape == (12, 3, 32, 32) and data["x"].dtype == np.uint8


def test_bench_top1_equals_pytorch_on_the_eval_set(run):
    from edgekd.pipeline.context import Context
    from edgekd.pipeline.layout import STAGES
    from edgekd.pipeline.runstate import load_progress
    from edgekd.pipeline.store import RunStore
    from edgekd.recipe import Recipe
    from edgekd.runtime.bench import bench as bench_files
    from edgekd.runtime.config import BenchConfig
    from edgekd.train.tensors import to_tensor

    out, _ = run
    recipe = Recipe.from_yaml(out / "recipe.yaml")
    store = RunStore(recipe, Context(run_dir=out, seed=recipe.seed), load_progress(out, STAGES)["done"])
    spec = store.splits().spec
    with np.load(out / "eval.npz") as data:
        x, y = data["x"], data["y"]
    with torch.no_grad():
        predicted = store.student().eval()(to_tensor(x, spec.mean, spec.std)).argmax(1).numpy()
    torch_top1 = 100.0 * float((predicted == y).mean())
    (row,) = bench_files([out / "model.fp32.onnx"], eval_set=out / "eval.npz",
                         cfg=BenchConfig(warmup=1, runs=2, min_seconds=0.0), progress=False)
    assert row.top1 == pytest.approx(torch_top1, abs=1e-9) and row.samples == 12


def test_the_device_resizes_raw_images_as_training_did(run, tmp_path):
    """Raw images at another size: edgekd.runtime.inputs (numpy + PIL) brings them to the model's
    input exactly as the training side decodes, resizes and crops the same files."""
    import onnx
    from PIL import Image

    from edgekd.data.image_files import decode_fitted
    from edgekd.runtime.inputs import fit_to_model, preprocess

    out, _ = run
    meta = {p.key: p.value for p in onnx.load(str(out / "model.fp32.onnx")).metadata_props}
    raw = np.random.default_rng(0).integers(0, 256, (3, 3, 45, 60), dtype=np.uint8)
    expected = []
    for i, image in enumerate(raw):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image.transpose(1, 2, 0), "RGB").save(path)  # lossless: the same pixels
        expected.append(decode_fitted(str(path), "RGB", 37, (32, 32)))
    np.testing.assert_array_equal(fit_to_model(raw, meta), np.stack(expected))
    grey = raw[:, :1]
    assert preprocess(grey, meta).shape == (3, 3, 32, 32)  # grey eval images for an RGB model: repeated
