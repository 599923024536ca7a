"""`edgekd bench --data FOLDER` with stated preprocessing, against PyTorch.

A foreign model (no edgekd metadata) that was "trained" on ImageNet-normalized input: a small
conv net whose weights come from a torch module, written with onnx.helper. The images are real
ones (the embedded Fashion-MNIST subset, tinted and resized to assorted sizes, PNG and JPEG),
filed into class folders by what PyTorch predicts for them with torchvision's transforms
(Resize 36, CenterCrop 32, ToTensor, Normalize): PyTorch's top-1 is 100 % by construction, and
any other preprocessing scores clearly less, so equality with PyTorch means the same pixels
reached the model.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn
from torchvision import transforms

from edgekd.cli import main
from edgekd.data.splits import load_arrays
from edgekd.errors import ConfigError, DataError
from edgekd.runtime import bench, eval_folder
from edgekd.runtime.bench_output import format_table
from edgekd.runtime.config import BenchConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FAST = ["--warmup", "0", "--runs", "3", "--min-seconds", "0", "--no-progress"]
CFG = {"warmup": 0, "runs": 3, "min_seconds": 0.0}
CLASSES = 10


def _torch_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, CLASSES))
    for p in net.parameters():
        nn.init.normal_(p, std=0.5)
    return net.eval()


def foreign_model(path, net: nn.Module, layout: str = "NCHW", order: str = "rgb", hw=(32, 32)):
    """The torch net as ONNX, with no metadata; NHWC transposes inside, BGR takes the colour
    channels reversed (the first conv's input channels flipped): all variants agree."""
    w, b = (t.detach().numpy() for t in (net[0].weight, net[0].bias))
    g, gb = (t.detach().numpy() for t in (net[4].weight, net[4].bias))
    inits = [numpy_helper.from_array(np.ascontiguousarray(w[:, ::-1] if order == "bgr" else w), "W"),
             numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.ascontiguousarray(g.T), "G"),
             numpy_helper.from_array(gb, "GB")]
    nodes, src = [], "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes += [helper.make_node("Conv", [src, "W", "B"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G", "GB"], ["logits"])]
    shape = ["N", *hw, 3] if layout == "NHWC" else ["N", 3, *hw]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _images(count: int = 60) -> list:
    """Fashion-MNIST images, tinted on a coloured background, at assorted sizes."""
    _, _, test_x, _, _ = load_arrays("fashion-mnist-subset")
    rng = np.random.default_rng(0)
    images = []
    for grey in test_x[:count, 0].astype(np.float32) / 255:
        tint, background = rng.uniform(0.2, 1.0, 3), rng.uniform(0, 255, 3)
        rgb = grey[..., None] * tint * 255 + (1 - grey[..., None]) * background
        height, width = (int(v) for v in rng.integers(30, 70, 2))
        image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
        images.append(image.resize((width, height), Image.Resampling.BICUBIC))
    return images


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """(folder, torch net, models by variant): the images filed by PyTorch's prediction
    (every class folder made, empty ones too: the index is the sorted name's position)."""
    d = tmp_path_factory.mktemp("foreign")
    net = _torch_net()
    pipeline = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(),
                                   transforms.Normalize(*IMAGENET)])
    folder = d / "images"
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True)
    images = _images()
    for i, image in enumerate(images):  # JPEG and PNG alike: PyTorch reads the decoded file back
        image.save(folder / "class0" / f"{i:03d}.{'jpg' if i % 5 == 0 else 'png'}")
    files = sorted((folder / "class0").iterdir())
    with torch.no_grad():
        batch = torch.stack([pipeline(Image.open(f).convert("RGB")) for f in files])
        predicted = net(batch).argmax(1).numpy()
    for f, label in zip(files, predicted):
        if label:
            f.rename(folder / f"class{label}" / f.name)
    counts = np.bincount(predicted, minlength=CLASSES)
    assert (counts > 0).sum() >= 4 and counts.max() <= 0.4 * len(files)  # not one class for everything
    models = {(layout, order): foreign_model(d / f"foreign_{layout}_{order}.onnx", net, layout, order)
              for layout in ("NCHW", "NHWC") for order in ("rgb", "bgr")}
    return folder, net, models, counts


def _bench(model, *flags):
    result = CliRunner().invoke(main, ["bench", str(model), *map(str, flags), "--json", *FAST])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["models"]
    return row


def test_imagenet_model_matches_pytorch_only_with_the_stated_preprocessing(scene):
    folder, _, models, counts = scene
    row = _bench(models["NCHW", "rgb"], "--data", folder, "--preprocess", "imagenet")
    assert row["top1"] == 100.0 and row["samples"] == counts.sum()
    (note,) = row["notes"]  # the model names no classes: numbered by sorted folder name, and said so
    assert note.startswith("classes numbered by sorted folder name (class0, class1,")
    assert row["preprocessing"]["source"] == "preset imagenet" and row["preprocessing"]["mean"] == list(IMAGENET[0])
    # the same numbers stated flag by flag
    row = _bench(models["NCHW", "rgb"], "--data", folder, "--mean", "0.485,0.456,0.406", "--std",
                 "0.229,0.224,0.225", "--scale", "1/255", "--crop-fraction", "0.875")
    assert row["top1"] == 100.0
    # wrong preprocessing: clearly worse (the largest class is at most 40 % of the images)
    for wrong in (["--scale", "1/255"], ["--preprocess", "none"]):
        assert _bench(models["NCHW", "rgb"], "--data", folder, *wrong)["top1"] <= 60.0, wrong
    assert _bench(models["NCHW", "rgb"], "--data", folder, "--preprocess", "inception")["top1"] < 100.0  # near miss


def test_without_metadata_or_stated_preprocessing_accuracy_is_null(scene, tmp_path):
    folder, _, models, _ = scene
    result = CliRunner().invoke(main, ["bench", str(models["NCHW", "rgb"]), "--data", str(folder), *FAST,
                                       "--json-out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["models"]
    assert row["top1"] is None and row["top5"] is None and row["samples"] == 0 and row["preprocessing"] is None
    assert row["latency_ms"]["p50"] > 0  # latency is still measured
    (note,) = row["notes"]
    assert "accuracy not measured" in note and "--preprocess imagenet" in note
    line = next(li for li in result.output.splitlines() if "accuracy not measured" in li)
    assert line.startswith(row["name"]) and "--mean/--std" in line  # the line under the table


@pytest.mark.parametrize("layout, order", [("NHWC", "rgb"), ("NCHW", "bgr"), ("NHWC", "bgr")])
def test_nhwc_and_bgr_models(scene, layout, order):
    folder, _, models, _ = scene
    flags = ["--data", folder, "--preprocess", "imagenet", "--layout", layout, "--channel-order", order]
    row = _bench(models[layout, order], *flags)
    assert row["top1"] == 100.0 and row["input_shape"][1:] == ([32, 32, 3] if layout == "NHWC" else [3, 32, 32])
    if order == "bgr":  # fed RGB, the BGR model is wrong
        assert _bench(models[layout, order], *flags[:-1], "rgb")["top1"] <= 60.0


def test_the_caffe_preset_reverses_mean_with_the_channels(scene, tmp_path):
    """caffe: BGR, 0-255 minus the mean listed R, G, B: a BGR model fed that equals the RGB
    model fed (x - mean) / 1 with the same mean in RGB order."""
    folder, _, models, _ = scene
    rgb = _bench(models["NCHW", "rgb"], "--data", folder, "--scale", "1", "--mean", "123.68,116.779,103.939",
                 "--crop-fraction", "0.875", "--input-size", "32")
    bgr = _bench(models["NCHW", "bgr"], "--data", folder, "--preprocess", "caffe")
    assert bgr["top1"] == rgb["top1"] and bgr["preprocessing"]["channel_order"] == "bgr"


def test_input_size_resizes_for_dynamic_models_and_is_needed_there(scene, tmp_path):
    folder, net, _, _ = scene
    dynamic = foreign_model(tmp_path / "dynamic.onnx", net, hw=("H", "W"))
    result = CliRunner().invoke(main, ["bench", str(dynamic), "--data", str(folder), "--preprocess", "imagenet",
                                       *FAST])
    assert result.exit_code == 2 and "--input-size" in result.output and len(result.output.splitlines()) == 1
    row = _bench(dynamic, "--data", folder, "--preprocess", "imagenet", "--input-size", "32,32")
    assert row["top1"] == 100.0 and row["input_shape"][1:] == [3, 32, 32]


def test_models_that_need_different_images_are_refused(scene, tmp_path):
    folder, net, models, _ = scene
    bigger = foreign_model(tmp_path / "big.onnx", net, hw=(40, 40))
    cfg = BenchConfig(**CFG, preprocess={"preset": "imagenet"})
    with pytest.raises(ConfigError, match="different images"):
        bench.bench([models["NCHW", "rgb"], bigger], eval_set=folder, cfg=cfg, progress=False)


def test_python_api_and_table(scene):
    folder, _, models, _ = scene
    rows = bench.bench([models["NCHW", "rgb"]], eval_set=folder, progress=False,
                       cfg=BenchConfig(**CFG, preprocess={"preset": "imagenet", "layout": "nchw"}))
    assert rows[0].top1 == 100.0 and rows[0].input_source == "eval"
    assert "100.00" in format_table(rows)


def _folder(tmp_path, files: dict):
    for name, data in files.items():
        (tmp_path / "f" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / name).write_bytes(data)
    return tmp_path / "f"


def _png(size=(40, 40)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("files, expected", [
    ({"a/1.png": b"", "b/2.png": None}, "cannot read image"),  # an empty file
    ({"a/1.png": None, "b/2.jpg": b"\xff\xd8\xff\xe0 truncated"}, "cannot read image"),
    ({"a/1.png": b"PNG"}, "cannot read image"),
    ({}, "has no class folders"),
    ({"a/readme.txt": b"text"}, "no images"),
])
def test_bad_folders_are_one_line_and_exit_2(scene, tmp_path, files, expected):
    _, _, models, _ = scene
    folder = _folder(tmp_path, {k: _png() if v is None else v for k, v in files.items()})
    folder.mkdir(exist_ok=True)
    result = CliRunner().invoke(main, ["bench", str(models["NCHW", "rgb"]), "--data", str(folder),
                                       "--preprocess", "imagenet", *FAST])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert expected in line and "Traceback" not in result.output
    if "cannot read" in expected:
        bad = next(name for name, v in files.items() if v is not None)
        assert str(folder / bad) in line  # the file is named


def test_a_truncated_png_names_the_file(scene, tmp_path):
    _, _, models, _ = scene
    folder = _folder(tmp_path, {"a/good.png": _png(), "b/cut.png": _png()[:60]})
    with pytest.raises(DataError, match=r"cut\.png"):
        bench.bench([models["NCHW", "rgb"]], eval_set=folder, progress=False,
                    cfg=BenchConfig(**CFG, preprocess={"preset": "imagenet"}))


def test_too_many_images_are_refused_before_decoding(scene, tmp_path, monkeypatch):
    _, _, models, _ = scene
    folder = _folder(tmp_path, {f"a/{i}.png": _png() for i in range(3)})
    monkeypatch.setattr("edgekd.runtime.feedlimit.feed_bytes_limit", lambda: 1000)  # < 3 x 3 x 32 x 32 x 4
    monkeypatch.setattr(eval_folder, "_decode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(DataError, match="fewer images"):
        bench.bench([models["NCHW", "rgb"]], eval_set=folder, progress=False,
                    cfg=BenchConfig(**CFG, preprocess={"preset": "imagenet"}))


def test_without_pillow_the_error_says_to_install_it(scene, tmp_path, monkeypatch):
    _, _, models, _ = scene
    folder = _folder(tmp_path, {"a/1.png": _png()})
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL -> ImportError
    with pytest.raises(ConfigError, match="pip install pillow"):
        bench.bench([models["NCHW", "rgb"]], eval_set=folder, progress=False,
                    cfg=BenchConfig(**CFG, preprocess={"preset": "imagenet"}))
