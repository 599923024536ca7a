"""Training and `edgekd bench --data` decode the same files to the same pixels.

An image folder of real pictures (the embedded Fashion-MNIST subset, tinted and enlarged) in
the formats and modes that decode differently: a large RGB JPEG (640x480 for a 64 px model,
where libjpeg's draft scaling would decode it at a quarter), a CMYK JPEG, an RGB PNG and a grey
PNG. Training's evaluation path is the data stage of a streamed image folder (the test images
of eval.npz, and the val images its DataLoader workers decode each epoch); bench's is
load_eval_data with a model that carries the metadata training writes. The uint8 arrays, the
point where both meet before normalization, must be identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgekd.data.config import DataConfig
from edgekd.data.splits import load_arrays, load_splits
from edgekd.data.stream import FileImages
from edgekd.onnx_export import model_metadata, set_metadata
from edgekd.runtime.eval_folder import load_eval_data

SIZE = 64  # the model's input; resize 73 (crop fraction 0.875)
# (suffix, PIL format, mode, width x height): the JPEGs are large enough for draft scaling
FILES = ((".jpg", "JPEG", "RGB", (640, 480)), (".jpg", "JPEG", "CMYK", (200, 160)),
         (".png", "PNG", "RGB", (96, 80)), (".png", "PNG", "L", (80, 100)))
CLASSES = ("coat", "shoe")


def _picture(grey: np.ndarray, size: tuple, rng) -> Image.Image:
    """A Fashion-MNIST image tinted on a coloured background, enlarged to `size` (detail at every scale
    from the bicubic edges, so a decode at another scale shows)."""
    g = grey.astype(np.float32)[..., None] / 255
    rgb = g * rng.uniform(0.3, 1.0, 3) * 255 + (1 - g) * rng.uniform(0, 255, 3)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity") / "images"
    _, _, test_x, _, _ = load_arrays("fashion-mnist-subset")
    rng = np.random.default_rng(0)
    i = 0
    for split, repeats in (("train", 3), ("test", 1)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for k in range(repeats):
                for j, (suffix, fmt, mode, size) in enumerate(FILES):
                    image = _picture(test_x[i, 0], size, rng).convert(mode)
                    image.save(root / split / name / f"{k}{j}{suffix}", fmt, quality=90)
                    i += 1
    return root


def _model(path, spec) -> str:
    """An ONNX classifier of spec's input with the metadata training writes (edgekd.onnx_export)."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "W", "B"], ["logits"])], "parity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", spec.channels, spec.height, spec.width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES)])],
        [numpy_helper.from_array(np.ones((spec.channels, len(CLASSES)), np.float32), "W"),
         numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    set_metadata(model, model_metadata(stage="student", arch="parity", spec=spec, params=0, macs=0))
    onnx.save(model, str(path))
    return str(path)


def _differing(a: np.ndarray, b: np.ndarray, files: list) -> list:
    """The files whose images differ (a short failure message instead of two arrays)."""
    assert a.shape == b.shape
    return [files[i] for i in np.flatnonzero((a != b).reshape(len(a), -1).any(axis=1))]


@pytest.mark.parametrize("channels", [None, 1])  # the folder's own colour (RGB: mixed), and grey
def test_training_and_bench_decode_the_same_files_to_the_same_pixels(folder, tmp_path, channels):
    cfg = DataConfig(name=str(folder), image_size=SIZE, channels=channels, streaming=True, workers=0,
                     val_fraction=0.5)
    splits = load_splits(cfg, seed=0)
    spec, stream = splits.spec, splits.stream
    assert stream is not None and stream.kind == "files" and spec.resize == 73
    model = _model(tmp_path / "model.onnx", spec)

    # eval.npz's test images (decoded up front by the data stage) against bench --data FOLDER/test
    bench_x, data = load_eval_data(str(folder / "test"), [model], None)
    assert data.class_names == CLASSES and bench_x.dtype == np.uint8
    assert bench_x.shape == (len(FILES) * len(CLASSES), spec.channels, SIZE, SIZE)
    test_files = sorted(str(p.relative_to(folder)) for p in (folder / "test").glob("*/*"))
    assert _differing(splits.test_x, bench_x, test_files) == []
    assert np.array_equal(splits.test_y, data.y)

    # the val images the DataLoader workers decode each epoch, against bench --data FOLDER/train
    bench_train, data = load_eval_data(str(folder / "train"), [model], None)
    rows = {f: i for i, f in enumerate(sorted(str(p) for p in (folder / "train").glob("*/*")))}
    images = FileImages(stream.val.files, stream.mode, stream.resize, stream.crop, policy=None)
    assert {Path(f).stem[1] for f in stream.val.files} == {str(j) for j in range(len(FILES))}  # every kind
    val_x = np.stack([images[index, 0, False].numpy() for index in range(len(images))])
    at = [rows[f] for f in stream.val.files]
    assert _differing(val_x, bench_train[at], stream.val.files) == []
    assert np.array_equal(stream.val.labels, data.y[at])
