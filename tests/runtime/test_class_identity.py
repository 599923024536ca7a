"""Class identity where bench's data meets a model (edgekd.runtime.datamatch): the data's class
names (image folders, an .npz's class_names) are mapped to the model's edgekd.class_names, a
class the model does not know is refused with both lists, and a model without names is
benched by the data's numbering with a note that says so.

The model predicts the brightest of 4 pixels; its classes are named in an order that is not
alphabetical, so numbering folders by sorted name gives a wrong accuracy."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgekd.cli import main

MODEL_CLASSES = ["zebra", "ant", "moth", "bee"]  # sorted: ant, bee, moth, zebra
FAST = ["--warmup", "0", "--runs", "2", "--min-seconds", "0", "--no-progress"]
PREPROCESS = {"edgekd.mean": "[0.0]", "edgekd.std": "[1.0]", "edgekd.preprocess": json.dumps(
    {"color": "L", "resize_shorter": None, "center_crop": [2, 2], "scale": "x / 255", "layout": "NCHW"})}


def brightest_pixel_net(path, class_names=None):
    """1x2x2 grey image -> 4 logits, the pixels themselves: class k is the brightest pixel k."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "I"], ["y"])], "brightest",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "I")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = dict(PREPROCESS)
    if class_names is not None:
        meta["edgekd.class_names"] = json.dumps(class_names)
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def image_of(label: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 100, 4).astype(np.uint8)
    pixels[label] = 200 + seed % 50
    return pixels.reshape(1, 2, 2)


def write_folders(root, names_by_label: dict, per_class: int = 3):
    """root/<name>/<i>.png: images whose brightest pixel is the model's index of the class."""
    for label, name in names_by_label.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(image_of(label, 10 * label + i)[0], "L").save(root / name / f"{i}.png")
    return root


def bench_json(*args):
    result = CliRunner().invoke(main, ["bench", *map(str, args), "--json", *FAST])
    return result, (json.loads(result.stdout)["models"][0] if result.exit_code == 0 else None)


@pytest.fixture
def model(tmp_path):
    return brightest_pixel_net(tmp_path / "named.onnx", MODEL_CLASSES)


def test_folders_are_numbered_by_the_model_class_names(tmp_path, model):
    folder = write_folders(tmp_path / "images", dict(enumerate(MODEL_CLASSES)))
    result, row = bench_json(model, "--data", folder)
    assert result.exit_code == 0, result.output
    assert row["top1"] == 100.0 and row["samples"] == 12 and row["notes"] == []


def test_folders_may_hold_a_subset_of_the_model_classes(tmp_path, model):
    folder = write_folders(tmp_path / "images", {2: "moth", 0: "zebra"})
    result, row = bench_json(model, "--data", folder)
    assert result.exit_code == 0, result.output
    assert row["top1"] == 100.0 and row["samples"] == 6


def test_a_folder_class_the_model_does_not_know_is_refused_with_both_lists(tmp_path, model):
    folder = write_folders(tmp_path / "images", {0: "zebra", 1: "ant", 2: "wasp"})
    result = CliRunner().invoke(main, ["bench", str(model), "--data", str(folder), *FAST])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "(wasp)" in line
    assert "folder classes: ant, wasp, zebra" in line and "model classes: zebra, ant, moth, bee" in line


def test_a_model_without_class_names_numbers_by_sorted_folder_name_and_says_so(tmp_path):
    unnamed = brightest_pixel_net(tmp_path / "unnamed.onnx")
    folder = write_folders(tmp_path / "images", {0: "a", 1: "b", 2: "c", 3: "d"})
    result, row = bench_json(unnamed, "--data", folder)
    assert result.exit_code == 0, result.output
    assert row["top1"] == 100.0
    (note,) = row["notes"]
    assert note.startswith("classes numbered by sorted folder name (a, b, c, d)")
    table = CliRunner().invoke(main, ["bench", str(unnamed), "--data", str(folder), *FAST])
    assert "classes numbered by sorted folder name" in table.output  # shown under the table too


def test_a_slash_in_a_class_name_matches_its_folder_written_with_underscore(tmp_path):
    slashed = brightest_pixel_net(tmp_path / "m.onnx", ["T-shirt/top", "Trouser", "Bag", "Ankle boot"])
    folder = write_folders(tmp_path / "images", {0: "T-shirt_top", 3: "Ankle boot", 2: "Bag"})
    result, row = bench_json(slashed, "--data", folder)
    assert result.exit_code == 0, result.output
    assert row["top1"] == 100.0


def _npz(path, labels, class_names=None):
    x = np.stack([image_of(label, i) for i, label in enumerate(labels)])
    arrays = {"x": x, "y": np.array(labels, np.int64)}
    if class_names is not None:
        arrays["class_names"] = np.array(class_names, dtype=str)
    np.savez(path, **arrays)
    return path


def test_npz_class_names_in_another_order_are_mapped(tmp_path, model):
    # the npz numbers its classes alphabetically; image i's brightest pixel is the model's index
    data_names = sorted(MODEL_CLASSES)
    model_labels = [0, 1, 2, 3, 1, 2]
    npz_labels = [data_names.index(MODEL_CLASSES[k]) for k in model_labels]
    x = np.stack([image_of(k, i) for i, k in enumerate(model_labels)])
    np.savez(tmp_path / "e.npz", x=x, y=np.array(npz_labels), class_names=np.array(data_names))
    result, row = bench_json(model, "--data", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    assert row["top1"] == 100.0 and row["notes"] == []


def test_npz_class_the_model_does_not_know_is_refused(tmp_path, model):
    npz = _npz(tmp_path / "e.npz", [0, 1, 2], ["zebra", "ant", "wasp"])
    result = CliRunner().invoke(main, ["bench", str(model), "--data", str(npz), *FAST])
    assert result.exit_code == 2, result.output
    assert "(wasp)" in result.output and "data classes: zebra, ant, wasp" in result.output
    assert "model classes: zebra, ant, moth, bee" in result.output


def test_npz_labels_beyond_its_class_names_are_refused(tmp_path, model):
    npz = _npz(tmp_path / "e.npz", [0, 3], ["zebra", "ant"])
    result = CliRunner().invoke(main, ["bench", str(model), "--data", str(npz), *FAST])
    assert result.exit_code == 2 and "labels go up to 3 but it names 2 classes" in result.output


def test_unchecked_numbering_is_noted(tmp_path, model):
    unnamed = brightest_pixel_net(tmp_path / "unnamed.onnx")
    _, row = bench_json(unnamed, "--data", _npz(tmp_path / "named.npz", [0, 1], ["p", "q", "r", "s"]))
    assert row["notes"][0].startswith("classes numbered as the eval set's class_names (p, q, r, s), unchecked")
    _, row = bench_json(model, "--data", _npz(tmp_path / "bare.npz", [0, 1]))
    assert row["notes"][0].startswith("labels taken as the model's class indices, unchecked")
    _, row = bench_json(unnamed, "--data", tmp_path / "bare.npz")
    assert row["notes"] == []  # neither side names classes: the labels are the data's own indices


@pytest.mark.parametrize("names", ['["a", "a", "b", "c"]', '"abcd"', "[1, 2, 3, 4]", "[]"])
def test_malformed_class_names_metadata_is_refused(tmp_path, names):
    path = brightest_pixel_net(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    helper.set_model_props(model, {**PREPROCESS, "edgekd.class_names": names})
    onnx.save(model, str(path))
    folder = write_folders(tmp_path / "images", {0: "a"})
    result = CliRunner().invoke(main, ["bench", str(path), "--data", str(folder), *FAST])
    assert result.exit_code == 2, result.output
    assert "edgekd.class_names" in result.output and "re-export the model" in result.output


def test_the_refusal_stays_one_short_line_with_many_or_odd_names(tmp_path):
    many = brightest_pixel_net(tmp_path / "m.onnx", [f"class-{i:04d}" for i in range(1000)])
    folder = write_folders(tmp_path / "images", {0: "class-0000", 1: "odd\nname"})
    result = CliRunner().invoke(main, ["bench", str(many), "--data", str(folder), *FAST])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "(odd?name)" in line and "... (1000 in all)" in line and len(line) < 1000
