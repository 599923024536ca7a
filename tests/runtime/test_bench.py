"""Tests for edgekd.runtime (bench) on tiny ONNX models built here with onnx.helper."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgekd.errors import ConfigError, DataError, ModelFileError, ProviderUnavailable
from edgekd.io import onnxfile
from edgekd.io.onnxfile import check_onnx_file
from edgekd.runtime import bench
from edgekd.runtime.bench_output import format_table
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.inputs import (
    SYNTHETIC_AGREEMENT_SAMPLES,
    agreement,
    evaluate,
    load_eval_set,
    preprocess,
    topk_accuracy,
)
from edgekd.runtime.machine import INT8_CPU_FLAGS, machine_info
from edgekd.runtime.measure import measure_latency, provider_node_counts
from edgekd.runtime.session import QDQ_OPS, make_session

REPO = Path(__file__).resolve().parents[2]
# The hand-made models have no edgekd metadata: they state x/255 (a model with metadata keeps its own)
CFG = BenchConfig(warmup=1, runs=5, min_seconds=0.0, batch_size=4, preprocess={"scale": "1/255"},
                  interleave=False)  # sequential, unless a test asks for interleaving
CLASSES = 10


def _save(graph, path, meta=None):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def conv_net(path, batch="N", hw=(8, 8), conv_head=False, meta=None):
    """Conv+Relu+GlobalAveragePool, then Flatten+Gemm -> (N, 10) or a 1x1 Conv -> (N, 10, 1, 1).
    The weights are fixed, so every variant predicts the same classes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    g = rng.standard_normal((8, CLASSES)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
    ]
    if conv_head:
        inits.append(numpy_helper.from_array(g.T.reshape(CLASSES, 8, 1, 1).copy(), "G"))
        nodes.append(helper.make_node("Conv", ["p", "G"], ["logits"]))
        out_shape = [batch, CLASSES, 1, 1]
    else:
        inits += [numpy_helper.from_array(g, "G"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "GB")]
        nodes += [helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G", "GB"], ["logits"])]
        out_shape = [batch, CLASSES]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return _save(graph, path, meta)


def argmax_net(path, four_d=False, meta=None):
    """1x2x2 image -> Flatten -> Gemm with identity weights: predicts the brightest pixel."""
    inits = [numpy_helper.from_array(np.eye(4, dtype=np.float32), "I")]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "I"], ["y"])]
    out_shape = ["N", 4]
    if four_d:
        inits.append(numpy_helper.from_array(np.array([0, 4, 1, 1], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["y", "shape"], ["y4"]))
        out_shape = ["N", 4, 1, 1]
    graph = helper.make_graph(
        nodes, "argmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        inits,
    )
    return _save(graph, path, meta)


# Four 1x2x2 images whose brightest pixel is 0, 1, 2, 3; the last label is wrong -> 75 %.
ARGMAX_X = np.array([[200, 0, 0, 0], [0, 255, 10, 0], [0, 0, 90, 3], [1, 2, 3, 4]], np.uint8).reshape(4, 1, 2, 2)
ARGMAX_Y = np.array([0, 1, 2, 0], np.int64)


class _Calibration(CalibrationDataReader):
    def __init__(self, x):
        self._batches = iter([{"x": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._batches, None)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    models = {
        "fp32": conv_net(d / "fp32.onnx"),
        "b1": conv_net(d / "b1.onnx", batch=1),
        "b3": conv_net(d / "b3.onnx", batch=3),
        "head4d": conv_net(d / "head4d.onnx", conv_head=True),
    }
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    x_float = x.astype(np.float32) / 255
    quantize_static(
        str(models["fp32"]), str(d / "model.int8.onnx"), _Calibration(x_float[:8]),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    models["int8"] = d / "model.int8.onnx"
    # Labels are the fp32 model's own predictions, so it scores exactly 100 %.
    session = ort.InferenceSession(str(models["fp32"]), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x_float})[0].argmax(1)
    np.savez(d / "eval.npz", x=x, y=y, class_names=np.array([f"c{i}" for i in range(CLASSES)]))
    models["eval"] = d / "eval.npz"
    return models


def test_import_needs_no_torch_onnx_or_tqdm():
    code = (
        "import importlib, pkgutil, sys, edgekd.runtime, edgekd.cli.bench\n"
        "for m in pkgutil.iter_modules(edgekd.runtime.__path__):\n"
        "    importlib.import_module('edgekd.runtime.' + m.name)\n"
        "loaded = [m for m in ('torch', 'torchvision', 'onnx', 'tqdm') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_bench_fp32_and_int8(zoo):
    fp32, int8 = bench.bench([zoo["fp32"], zoo["int8"]], eval_set=zoo["eval"], cfg=CFG, progress=False)
    assert fp32.name == "fp32" and int8.name == "model.int8"
    assert fp32.top1 == 100.0 and fp32.samples == 20
    assert int8.top1 >= 80.0
    assert fp32.int8_ops == 0 and fp32.qdq_nodes == 0
    assert int8.int8_ops > 0 and int8.op_counts["QLinearConv"] == 1
    assert int8.qdq_nodes < sum(
        n.op_type in QDQ_OPS for n in onnx.load(str(zoo["int8"])).graph.node
    )  # ORT fused the QDQ groups into int8 kernels
    # Foreign models: no metadata, params counted from initializers (W, B, G, GB).
    assert fp32.stage is None and fp32.arch is None and fp32.macs is None
    assert fp32.params == 8 * 3 * 3 * 3 + 8 + 8 * CLASSES + CLASSES
    for row in (fp32, int8):
        lat = row.latency_ms
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert row.runs >= CFG.runs and row.warmup == CFG.warmup
        assert row.batch_size == 4 and row.input_shape == [4, 3, 8, 8]
        assert row.throughput == pytest.approx(4 / (lat["mean"] / 1000))
        assert row.session_ms > 0 and row.first_run_ms > 0
        assert row.providers_used[0] == "CPUExecutionProvider"
        assert row.file_bytes == Path(row.path).stat().st_size


def test_fixed_batch_and_4d_logits(zoo):
    rows = bench.bench([zoo["b1"], zoo["b3"], zoo["head4d"]], eval_set=zoo["eval"], cfg=CFG, progress=False)
    # Fixed batch dims win over cfg.batch_size; accuracy runs in (padded) fixed batches.
    assert [r.batch_size for r in rows] == [1, 3, 4]
    assert [r.top1 for r in rows] == [100.0, 100.0, 100.0]


def test_synthetic_input_without_eval_set(zoo):
    (row,) = bench.bench([zoo["b1"]], cfg=CFG, progress=False)
    assert row.top1 is None and row.samples == 0 and row.input_shape == [1, 3, 8, 8]


def test_dynamic_hw_needs_eval_set_or_fixed_size(tmp_path, zoo):
    path = conv_net(tmp_path / "dyn_hw.onnx", hw=("H", "W"))
    with pytest.raises(ModelFileError, match="dynamic dims"):
        bench.bench([path], cfg=CFG, progress=False)
    (row,) = bench.bench([path], eval_set=zoo["eval"], cfg=CFG, progress=False)
    assert row.input_shape == [4, 3, 8, 8] and row.top1 == 100.0


def test_eval_set_shape_mismatch(tmp_path, zoo):
    np.savez(tmp_path / "small.npz", x=np.zeros((2, 3, 4, 4), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="expects"):
        bench.bench([zoo["fp32"]], eval_set=tmp_path / "small.npz", cfg=CFG, progress=False)


def test_non_float_input_is_benched_with_synthetic_data(tmp_path, zoo):
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Flatten", ["xf"], ["y"])]
    graph = helper.make_graph(
        nodes, "u8",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 192])],
    )
    path = _save(graph, tmp_path / "u8.onnx")
    (row,) = bench.bench([path], eval_set=zoo["eval"], cfg=CFG, progress=False)
    assert row.top1 is None and row.samples == 0 and row.params == 0


@pytest.mark.parametrize("four_d", [False, True])
def test_evaluate_hand_computed(tmp_path, four_d):
    path = argmax_net(tmp_path / "argmax.onnx", four_d=four_d)
    session = make_session(path)
    x = preprocess(ARGMAX_X, {})
    assert evaluate(session, x, ARGMAX_Y) == 75.0
    assert evaluate(session, x, ARGMAX_Y, batch_size=3) == 75.0  # a partial last batch
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    (row,) = bench.bench([path], eval_set=tmp_path / "eval.npz", cfg=CFG, progress=False)
    assert row.top1 == 75.0 and row.samples == 4


def test_preprocess_uses_metadata_mean_std():
    x = np.array([[[[0, 255]], [[51, 102]]]], np.uint8)  # N=1, C=2, H=1, W=2
    meta = {"edgekd.mean": "[0.5, 0.25]", "edgekd.std": "[0.5, 2.0]"}
    expected = np.array([[[[-1.0, 1.0]], [[(0.2 - 0.25) / 2, (0.4 - 0.25) / 2]]]], np.float32)
    out = preprocess(x, meta)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(preprocess(x, {}), x / 255.0, rtol=1e-6)
    with pytest.raises(DataError, match="3 values"):
        preprocess(x, {"edgekd.mean": "[0.1, 0.2, 0.3]"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        preprocess(x, {"edgekd.std": "[0.5,"})


def test_edgekd_metadata_is_reported(tmp_path):
    meta = {
        "edgekd.version": "0.1.0", "edgekd.stage": "student", "edgekd.arch": "argmaxnet",
        "edgekd.input_layout": "NCHW", "edgekd.mean": "[0.5]", "edgekd.std": "[0.25]",
        "edgekd.class_names": json.dumps(["a", "b", "c", "d"]), "edgekd.params": "16", "edgekd.macs": "12345",
    }
    path = argmax_net(tmp_path / "student.onnx", meta=meta)
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    (row,) = bench.bench([path], eval_set=tmp_path / "eval.npz", cfg=CFG, progress=False)
    assert (row.stage, row.arch, row.params, row.macs) == ("student", "argmaxnet", 16, 12345)
    assert row.top1 == 75.0  # normalisation is monotonic, so the argmax is unchanged


@pytest.mark.parametrize("content", ["random", "empty", "truncated"])
def test_not_onnx_files(tmp_path, zoo, content):
    data = {
        "random": np.random.default_rng(0).bytes(1000),
        "empty": b"",
        "truncated": zoo["int8"].read_bytes()[:300],
    }[content]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="not a valid ONNX model") as info:
        check_onnx_file(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelFileError):
        bench.bench([path], cfg=CFG, progress=False)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        check_onnx_file(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="not a file"):
        check_onnx_file(tmp_path)


def test_without_onnx_installed(monkeypatch, tmp_path, zoo):
    monkeypatch.setattr(onnxfile, "_onnx", lambda: None)
    path = tmp_path / "bad.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    # edgekd's own protobuf reader (for external data) refuses what is not protobuf at all
    with pytest.raises(ModelFileError, match="not a valid ONNX model"):
        check_onnx_file(path)
    path.write_bytes(b"\x08\x01")  # a ModelProto with ir_version 1 and nothing else
    check_onnx_file(path)  # well-formed protobuf, no external data: only ORT can tell now
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load") as info:
        bench.bench([path], cfg=CFG, progress=False)
    assert "\n" not in str(info.value)
    (row,) = bench.bench([zoo["fp32"]], eval_set=zoo["eval"], cfg=CFG, progress=False)
    assert row.params is None and row.op_counts is None and row.int8_ops is None and row.top1 == 100.0


def test_provider_errors(zoo):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu") as info:
            make_session(zoo["fp32"], BenchConfig(provider="cuda"))
        assert re.search(r"available: [^)]*\bcpu\b", str(info.value))
    with pytest.raises(ConfigError, match="known: cpu, cuda"):
        make_session(zoo["fp32"], BenchConfig(provider="gpu"))
    with pytest.raises(ConfigError, match="unknown provider"):
        bench.bench([zoo["fp32"]], cfg=BenchConfig(provider="gpu"), progress=False)


def test_silent_fallback_is_an_error(zoo, monkeypatch):
    # Pretend this onnxruntime lists OpenVINO: ORT then falls back to CPU silently.
    listed = ort.get_available_providers() + ["OpenVINOExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.warns(UserWarning), pytest.raises(ProviderUnavailable, match="fell back to CPUExecutionProvider"):
        make_session(zoo["fp32"], BenchConfig(provider="openvino"))


class _SleepySession:
    def __init__(self):
        self.calls = 0

    def run(self, outputs, feed):
        self.calls += 1
        time.sleep(0.002)


def test_measure_latency_protocol():
    session = _SleepySession()
    timings, first, warmup = measure_latency(session, {}, warmup=3, runs=5, min_seconds=0.0)
    assert len(timings) == 5 and session.calls == 1 + 3 + 5 and first >= 2.0 and warmup == 3
    assert all(t >= 2.0 for t in timings)
    session = _SleepySession()
    start = time.perf_counter()
    timings, _, _ = measure_latency(session, {}, warmup=0, runs=2, min_seconds=0.1)
    assert time.perf_counter() - start >= 0.1 and len(timings) > 2


def test_warmup_by_seconds():
    """Warm-up lasts at least `warmup` runs and `warmup_seconds`: 0.05 s of 2 ms runs is
    more than the 3 runs asked for, and none of them is timed."""
    session = _SleepySession()
    start = time.perf_counter()
    timings, _, warmup = measure_latency(session, {}, warmup=3, runs=4, min_seconds=0.0, warmup_seconds=0.05)
    assert time.perf_counter() - start >= 0.05 + 4 * 0.002
    assert 3 < warmup <= 0.05 / 0.002 + 1 and len(timings) == 4 and session.calls == 1 + warmup + 4


def test_load_eval_set(tmp_path):
    good = tmp_path / "good.npz"
    labels, names = np.array([0, 1, 2], np.int32), np.array(["a", "b", "c"])
    np.savez(good, x=np.zeros((3, 1, 2, 2), np.uint8), y=labels, class_names=names)
    x, y, names = load_eval_set(good)
    assert x.shape == (3, 1, 2, 2) and y.dtype == np.int64 and names == ["a", "b", "c"]
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 1, 2, 2), np.uint8))
    assert load_eval_set(tmp_path / "nolabels.npz")[1:] == (None, None)

    bad = {
        "noise.npz": None,
        "nox.npz": {"y": np.zeros(3, np.int64)},
        "float.npz": {"x": np.zeros((3, 1, 2, 2), np.float32)},
        "flat.npz": {"x": np.zeros((3, 4), np.uint8)},
        "ylen.npz": {"x": np.zeros((3, 1, 2, 2), np.uint8), "y": np.zeros(2, np.int64)},
        "pickle.npz": {"x": np.zeros((3, 1, 2, 2), np.uint8), "class_names": np.array([{"a": 1}], dtype=object)},
    }
    for name, arrays in bad.items():
        path = tmp_path / name
        if arrays is None:
            path.write_bytes(b"not a zip file at all")
        else:
            np.savez(path, **arrays)
        with pytest.raises(DataError) as info:
            load_eval_set(path)
        assert "\n" not in str(info.value), name
    with pytest.raises(DataError, match="does not exist"):
        load_eval_set(tmp_path / "missing.npz")


def test_bench_run_dir(tmp_path, zoo):
    conv_net(tmp_path / "a_student.onnx", meta={"edgekd.stage": "student"})
    conv_net(tmp_path / "teacher.onnx", meta={"edgekd.stage": "teacher"})
    (tmp_path / "model.int8.onnx").write_bytes(zoo["int8"].read_bytes())
    (tmp_path / "eval.npz").write_bytes(zoo["eval"].read_bytes())
    rows = bench.bench_run_dir(tmp_path, cfg=CFG, progress=False)
    assert [r.name for r in rows] == ["teacher", "a_student", "model.int8"]
    assert [r.stage for r in rows] == ["teacher", "student", None]
    assert all(r.samples == 20 for r in rows)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no .onnx files"):
        bench.bench_run_dir(tmp_path / "empty")


def test_to_json_and_table(zoo):
    rows = bench.bench([zoo["fp32"], zoo["b1"]], cfg=CFG, progress=False)
    report = json.loads(json.dumps(bench.to_json(rows, {"run": "r1"}, cfg=CFG)))
    assert report["schema"] == bench.SCHEMA == "edgekd.bench/1" and report["run"] == "r1"
    assert report["config"]["runs"] == CFG.runs
    machine = report["machine"]
    assert machine["onnxruntime"] == ort.__version__ and "CPUExecutionProvider" in machine["providers"]
    assert machine["cores"] >= 1 and isinstance(machine["int8_cpu_flags"], list) and machine["cpu"]
    for model in report["models"]:
        for key in ("name", "stage", "top1", "params", "macs", "file_bytes", "provider", "batch_size"):
            assert key in model
        assert set(model["latency_ms"]) >= {"p50", "p90", "p99", "mean", "min", "max"}
    table = format_table(rows).splitlines()
    # header, rule, rows, one legend line per flagged row, then one note per model
    assert len(table) == 2 + 3 * len(rows)
    assert table[-2:] == ["fp32: synthetic input (no eval set): accuracy not measured",
                          "b1: synthetic input (no eval set): accuracy not measured"]
    assert table[0].split()[:3] == ["model", "stage", "provider"]
    assert table[2].startswith("fp32") and " - " in table[2]  # no stage, no top1, no MACs
    assert re.search(r" \d+\.\d{3}\* ", table[2])  # p50 marked: 5 runs are too few for p90/p99
    assert table[4].startswith("* fp32 (batch 4, threads default): low confidence: p90 from 5 runs")


def test_machine_info_flags_are_from_the_known_list():
    assert set(machine_info()["int8_cpu_flags"]) <= set(INT8_CPU_FLAGS)


def test_topk_accuracy_by_hand():
    # 3 samples, 6 classes; labels 0, 5, 2
    logits = np.array([
        [9, 1, 2, 3, 4, 5],   # label 0 is the top-1
        [9, 8, 7, 6, 5, 0],   # label 5 is the smallest: outside the top-5
        [1, 9, 8, 2, 3, 4],   # label 2 is second: top-5 but not top-1
    ], dtype=np.float32)
    y = np.array([0, 5, 2])
    assert topk_accuracy(logits, y, 1) == pytest.approx(100 / 3)
    assert topk_accuracy(logits, y, 5) == pytest.approx(200 / 3)
    assert topk_accuracy(logits[:, :4], y, 5) is None  # fewer classes than k


# -- agreement with a reference model ---------------------------------------------------


def biased_argmax_net(path, bias):
    """argmax_net plus a constant bias per class: outputs = pixels / 255 + bias."""
    inits = [numpy_helper.from_array(np.eye(4, dtype=np.float32), "I"),
             numpy_helper.from_array(np.asarray(bias, np.float32), "C")]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "I", "C"], ["y"])]
    graph = helper.make_graph(
        nodes, "argmax_biased",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return _save(graph, path)


def test_agreement_by_hand():
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.6]], np.float32)
    ref = np.array([[0.2, 0.7], [0.1, 0.3], [0.5, 0.6]], np.float32)
    got = agreement(out, ref)
    assert got["argmax_match"] == pytest.approx(200 / 3) and got["samples"] == 3  # row 1 flips
    assert got["max_abs_diff"] == pytest.approx(0.7, abs=1e-6)  # |0.8 - 0.1|
    with pytest.raises(ModelFileError, match="same output"):
        agreement(out, ref[:, :1])


def test_reference_with_a_known_constant_and_a_flipped_argmax(tmp_path):
    """On ARGMAX_X / 255: a reference that adds 0.25 to every output agrees on every argmax
    and differs by exactly 0.25; one that adds 0.9 to class 3 flips images 0 (0.78 < 0.9)
    and 2 (0.35 < 0.91) but not 1 (1.0 > 0.9) nor 3 (already class 3): 50 %, max diff 0.9."""
    model = argmax_net(tmp_path / "model.onnx")
    shifted = biased_argmax_net(tmp_path / "shifted.onnx", [0.25] * 4)
    flipped = biased_argmax_net(tmp_path / "flipped.onnx", [0, 0, 0, 0.9])
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    for reference, match, diff in ((shifted, 100.0, 0.25), (flipped, 50.0, 0.9)):
        (row,) = bench.bench([model], eval_set=tmp_path / "eval.npz", cfg=CFG, progress=False, reference=reference)
        assert row.reference == {"path": str(reference), "argmax_match": match,
                                 "max_abs_diff": pytest.approx(diff, abs=1e-6), "samples": 4, "inputs": "eval"}
        assert row.top1 == 75.0  # the model's own accuracy is unchanged
    # Without an eval set: 64 synthetic inputs; a constant shift still changes no argmax.
    (row,) = bench.bench([model], cfg=CFG, progress=False, reference=shifted)
    assert row.reference["inputs"] == "synthetic" and row.reference["samples"] == SYNTHETIC_AGREEMENT_SAMPLES
    assert row.reference["argmax_match"] == 100.0 and row.reference["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)


def test_reference_must_take_the_same_input_and_give_the_same_output(tmp_path, zoo):
    model = argmax_net(tmp_path / "model.onnx")
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    # a 4-D (N, 4, 1, 1) reference output is flattened like the model's: it agrees fully
    (row,) = bench.bench([model], eval_set=tmp_path / "eval.npz", cfg=CFG, progress=False,
                         reference=argmax_net(tmp_path / "four_d.onnx", four_d=True))
    assert row.reference["argmax_match"] == 100.0 and row.reference["max_abs_diff"] == 0.0
    pool = helper.make_graph(  # the zoo's 3 x 8 x 8 input, but 3 outputs (channel means), not 10
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    with pytest.raises(ModelFileError, match="outputs are"):
        bench.bench([zoo["fp32"]], eval_set=zoo["eval"], cfg=CFG, progress=False, reference=_save(pool, tmp_path / "p.onnx"))
    with pytest.raises(DataError, match="expects"):  # a 3 x 8 x 8 reference cannot take these 1 x 2 x 2 images
        bench.bench([model], eval_set=tmp_path / "eval.npz", cfg=CFG, progress=False, reference=zoo["fp32"])
    with pytest.raises(ModelFileError, match="reference"):  # nor synthetic 1 x 2 x 2 input
        bench.bench([model], cfg=CFG, progress=False, reference=zoo["b1"])


def test_run_dir_compares_int8_with_fp32(tmp_path):
    argmax_net(tmp_path / "model.fp32.onnx")
    biased_argmax_net(tmp_path / "model.int8.onnx", [0, 0, 0, 0.9])  # stands in for an int8 model
    argmax_net(tmp_path / "teacher.fp32.onnx")
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    rows = bench.bench_run_dir(tmp_path, CFG, progress=False)
    assert [r.name for r in rows] == ["teacher.fp32", "model.fp32", "model.int8"]
    assert rows[0].reference is None and rows[1].reference is None
    assert rows[2].reference["path"] == str(tmp_path / "model.fp32.onnx") and rows[2].reference["argmax_match"] == 50.0
    assert bench.run_dir_references([tmp_path / "a.int8.onnx"]) == {}  # no fp32 partner


# -- protocol options and where nodes ran ------------------------------------------------


def test_provider_nodes_on_cpu_equal_the_optimized_graph(zoo):
    rows = bench.bench([zoo["fp32"], zoo["int8"], zoo["head4d"]], cfg=CFG, progress=False)
    for row in rows:
        assert row.provider_nodes == {"CPUExecutionProvider": sum(row.op_counts.values())}
        assert row.fallback_nodes == 0
    assert rows[1].int8_ops > 0  # the int8 graph: its fused int8 kernels are counted as nodes too


def test_provider_node_counts_from_a_hand_made_profile(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "conv_fence_before", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "conv_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "relu_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "nms_kernel_time", "args": {"provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "conv_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},  # 2nd run
    ]
    (tmp_path / "p.json").write_text(json.dumps(events))
    assert provider_node_counts(tmp_path / "p.json") == {"CUDAExecutionProvider": 2, "CPUExecutionProvider": 1}
    assert provider_node_counts(tmp_path / "missing.json") == {}


def test_thread_and_spinning_options_reach_the_session(zoo):
    session = make_session(zoo["fp32"], BenchConfig(threads=1, inter_threads=2, intra_spinning=False,
                                                inter_spinning=True))
    options = session.get_session_options()
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL and options.inter_op_num_threads == 2
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "1"
    default = make_session(zoo["fp32"]).get_session_options()
    assert default.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's own default applies
        default.get_session_config_entry("session.intra_op.allow_spinning")
    cfg = BenchConfig(warmup=1, runs=3, min_seconds=0.0, inter_threads=2, intra_spinning=False)
    (row,) = bench.bench([zoo["fp32"]], cfg=cfg, progress=False)
    assert row.inter_threads == 2
    with pytest.raises(ConfigError, match="inter_threads"):
        BenchConfig(inter_threads=-1)


# -- interleaved timing ---------------------------------------------------------------


class _LoggingSession:
    """Appends its name to a shared log at every run (no sleep: the loop itself is timed)."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, outputs, feed):
        self.log.append(self.name)


def test_measure_interleaved_rotates_short_rounds_until_every_model_is_done(monkeypatch):
    from edgekd.runtime import measure as bench_measure

    monkeypatch.setattr(bench_measure, "ROUND_RUNS", 3)
    log = []
    sessions = [(_LoggingSession(name, log), {}) for name in "abc"]
    timings = bench_measure.measure_interleaved(sessions, runs=7, min_seconds=0.0)
    # 7 runs need 3 rounds of 3; every round runs each model 3 times, the first model rotating
    assert [len(t) for t in timings] == [9, 9, 9]
    assert "".join(log) == "aaabbbccc" + "bbbcccaaa" + "cccaaabbb"
    assert all(t >= 0 for times in timings for t in times)
    # a round ends early after ROUND_SECONDS: one 2 ms run per round when the cap is 1 ms
    monkeypatch.setattr(bench_measure, "ROUND_SECONDS", 0.001)
    timings = bench_measure.measure_interleaved([(_SleepySession(), {}), (_SleepySession(), {})], runs=4,
                                                min_seconds=0.0)
    assert [len(t) for t in timings] == [4, 4] and min(min(t) for t in timings) >= 2.0
    # min_seconds counts each model's own timed time
    timings = bench_measure.measure_interleaved([(_SleepySession(), {}), (_SleepySession(), {})], runs=1,
                                                min_seconds=0.02)
    assert min(sum(t) for t in timings) >= 20.0 and len(timings[0]) == len(timings[1])
    # a model that is done keeps running with the others: 3 fast runs a round until the slow one has 5
    log = []
    timings = bench_measure.measure_interleaved([(_SleepySession(), {}), (_LoggingSession("x", log), {})], runs=5,
                                                min_seconds=0.0)
    assert len(timings[0]) == 5 and len(timings[1]) == len(log) == 15


def test_bench_interleave_gives_the_same_rows_with_a_note(zoo):
    import dataclasses

    cfg = dataclasses.replace(CFG, interleave=True)
    rows = bench.bench([zoo["fp32"], zoo["int8"], zoo["b1"]], eval_set=zoo["eval"], cfg=cfg, progress=False,
                       sweep=bench.Sweep(batch_sizes=[2, 4]))
    # b1 has a fixed batch of 1: one result for it, as in the sequential mode
    assert [(r.name, r.batch_size) for r in rows] == [("fp32", 2), ("fp32", 4), ("model.int8", 2),
                                                      ("model.int8", 4), ("b1", 1)]
    sequential = bench.bench([zoo["fp32"], zoo["int8"], zoo["b1"]], eval_set=zoo["eval"], cfg=CFG, progress=False,
                             sweep=bench.Sweep(batch_sizes=[2, 4]))
    for row, plain in zip(rows, sequential):
        assert (row.top1, row.int8_ops, row.input_shape) == (plain.top1, plain.int8_ops, plain.input_shape)
        assert row.runs >= CFG.runs and row.warmup == CFG.warmup and row.first_run_ms > 0
        assert row.latency_ms["min"] <= row.latency_ms["p50"] <= row.latency_ms["max"]
        assert any("timed interleaved with 4 other result(s)" in n for n in row.notes)
        assert not any("interleaved" in n for n in plain.notes)
        if row.rss_peak_bytes is not None:
            assert row.rss_peak_bytes >= row.rss_before_bytes
    (alone,) = bench.bench([zoo["fp32"]], cfg=cfg, progress=False)
    assert not any("interleaved" in n for n in alone.notes)


def test_interleave_option_reaches_the_report(tmp_path, zoo):
    from click.testing import CliRunner

    from edgekd.cli import main

    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["bench", str(zoo["fp32"]), str(zoo["int8"]), "--interleave", "--runs", "20",
                                       "--min-seconds", "0", "--warmup", "2", "--no-progress", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["interleave"] is True and len(report["models"]) == 2
    with pytest.raises(Exception, match="bench.interleave must be true or false"):
        BenchConfig(interleave="yes")


def test_data_takes_a_dataset_name_as_compress_does():
    """--data means a dataset by name or path in every command: bench takes a registered
    name's test split (numpy only), the same images a run writes as eval.npz."""
    from edgekd.data.splits import load_arrays

    x, y, names = load_eval_set("fashion-mnist-subset")
    _, _, test_x, test_y, class_names = load_arrays("fashion-mnist-subset")
    assert x.shape == (2000, 1, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x, test_x) and np.array_equal(y, test_y) and names == list(class_names)
    with pytest.raises(DataError, match="does not exist"):
        load_eval_set("no-such-dataset-or-file")
