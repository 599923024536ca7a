"""Size, channels and preprocessing where bench's data meets a model (edgekd.runtime.datamatch),
and `bench --compare` as a gate: eval arrays at another size or channel count are refused
unless --fit-data (then the row notes it), malformed metadata mean/std is one line and exit 2,
and a comparison with nothing in common fails (exit 1)."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekd.cli import main

FAST = ["--warmup", "0", "--runs", "2", "--min-seconds", "0", "--no-progress"]
SIDE = 16


def rgb_preprocess(**change) -> dict:
    steps = {"color": "RGB", "resize_shorter": SIDE, "interpolation": "bilinear", "center_crop": [SIDE, SIDE],
             "scale": "x / 255", "layout": "NCHW", **change}
    return {"edgekd.mean": "[0.5, 0.5, 0.5]", "edgekd.std": "[0.25, 0.25, 0.25]",
            "edgekd.preprocess": json.dumps(steps)}


def brightest_channel_net(path, meta: dict, channels: int = 3):
    """channels x SIDE x SIDE -> GlobalAveragePool -> one logit per channel: the brightest one."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "I"], ["y"])], "brightest",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels])],
        [numpy_helper.from_array(np.eye(channels, dtype=np.float32), "I")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def npz(path, channels: int, side: int, n: int = 6):
    x = np.random.default_rng(0).integers(0, 256, (n, channels, side, side), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(n) % 3)
    return path


def bench(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args), *FAST])


@pytest.fixture
def rgb_model(tmp_path):
    return brightest_channel_net(tmp_path / "rgb.onnx", rgb_preprocess())


def test_small_grey_arrays_on_a_larger_rgb_model_are_refused_naming_both_shapes_and_the_flag(tmp_path, rgb_model):
    result = bench(rgb_model, "--data", npz(tmp_path / "grey.npz", 1, 8))
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "1x8x8" in line and f"3x{SIDE}x{SIDE}" in line and "--fit-data" in line


@pytest.mark.parametrize("channels, side", [(1, SIDE), (3, 8), (3, 32)])
def test_a_channel_or_size_mismatch_alone_is_refused(tmp_path, rgb_model, channels, side):
    result = bench(rgb_model, "--data", npz(tmp_path / "e.npz", channels, side))
    assert result.exit_code == 2 and "--fit-data" in result.output, result.output


def test_fit_data_converts_resizes_and_says_so(tmp_path, rgb_model):
    result = bench(rgb_model, "--data", npz(tmp_path / "grey.npz", 1, 8), "--fit-data", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["models"]
    assert row["input_source"] == "eval" and row["samples"] == 6 and row["top1"] is not None
    assert f"eval images 1x8x8 converted and resized to 3x{SIDE}x{SIDE} (--fit-data)" in row["notes"]


def test_arrays_at_the_model_input_pass_without_a_note(tmp_path, rgb_model):
    result = bench(rgb_model, "--data", npz(tmp_path / "e.npz", 3, SIDE), "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["models"]
    assert row["notes"] == [] and row["top1"] is not None


def test_a_dataset_by_name_at_another_size_is_refused(rgb_model):
    result = bench(rgb_model, "--data", "fashion-mnist-subset")
    assert result.exit_code == 2 and "1x28x28" in result.output and "--fit-data" in result.output, result.output


@pytest.mark.parametrize("meta, named", [
    ({"edgekd.mean": "[0.1, 0.2]", "edgekd.std": "[0.3, 0.3, 0.3]"}, ["edgekd.mean", "[0.1, 0.2]", "edgekd.std"]),
    ({"edgekd.mean": "[0.1, 0.2, 0.3, 0.4]", "edgekd.std": "[0.3, 0.3]"}, ["edgekd.mean", "edgekd.std"]),
    ({"edgekd.mean": "[0.1, 0.2]"}, ["edgekd.mean", "[0.1, 0.2]", "3 channel"]),  # the input has 3 channels
    ({"edgekd.std": "[0.1, 0.2, 0.3, 0.4]"}, ["edgekd.std", "3 channel"]),
    ({"edgekd.mean": "[]", "edgekd.std": "[0.3]"}, ["edgekd.mean"]),
    ({"edgekd.mean": "[0.5]", "edgekd.std": "[0.2, 0, 0.2]"}, ["edgekd.std"]),
    ({"edgekd.mean": "[NaN]"}, ["edgekd.mean"]),
    ({"edgekd.std": '["0.2"]'}, ["edgekd.std"]),
    ({"edgekd.std": "0.2"}, ["edgekd.std"]),
    ({**rgb_preprocess(color="CMYK")}, ["edgekd.preprocess", "CMYK"]),
    ({**rgb_preprocess(interpolation="nearest")}, ["edgekd.preprocess", "nearest"]),
    ({**rgb_preprocess(color="L")}, ["edgekd.mean", "color is L"]),  # 3 values for grey
])
def test_malformed_metadata_preprocessing_is_one_line_and_exit_2(tmp_path, meta, named):
    model = brightest_channel_net(tmp_path / "m.onnx", meta)
    result = bench(model, "--data", npz(tmp_path / "e.npz", 3, SIDE))
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "internal error" not in line and "re-export the model" in line
    for text in named:
        assert text in line


def _report(path, *names):
    models = [{"name": n, "batch_size": 1, "threads": 0, "latency_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
               "throughput": 1000.0, "top1": 75.0, "low_confidence": []} for n in names]
    path.write_text(json.dumps({"schema": "edgekd.bench/1", "models": models}))
    return path


@pytest.mark.parametrize("as_json", [False, True])
def test_compare_with_nothing_in_common_fails(tmp_path, as_json):
    a, b = _report(tmp_path / "a.json", "model.fp32"), _report(tmp_path / "b.json", "model.int8")
    result = CliRunner().invoke(main, ["bench", "--compare", str(a), str(b), *(["--json"] if as_json else [])])
    assert result.exit_code == 1, result.output
    assert "no results in common between" in result.output and "Traceback" not in result.output
    empty = _report(tmp_path / "empty.json")
    assert CliRunner().invoke(main, ["bench", "--compare", str(a), str(empty)]).exit_code == 1
    # one result in common: compared, exit 0
    both = _report(tmp_path / "both.json", "model.fp32", "model.int8")
    assert CliRunner().invoke(main, ["bench", "--compare", str(a), str(both)]).exit_code == 0
