"""Accuracy budget of int8 (edgekd.quant_budget): a deliberately quantization-hostile layer
is found by its SQNR loss, kept in float, and the budget is met; an impossible budget
fails the run with exit code 3 and keeps what it can."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import AccuracyBudgetExceeded, GateFailed
from edgekd.onnx_export import INPUT_NAME, OUTPUT_NAME
from edgekd.pipeline.stage_inputs import QuantizeInputs
from edgekd.quant import budget as quant_budget
from edgekd.quant.config import QuantConfig
from edgekd.quant.ptq import ptq

OPSET = 17


def hostile_model(path: Path, center_images: np.ndarray) -> None:
    """input 1x8x8 -> conv1 (4 ch) -> Relu -> conv2 (8 ch) -> Relu -> GAP -> head (Gemm, 3 classes).

    conv1's channel 0 is always 0 after the Relu (tiny weights, bias -5), and conv2 gives that
    dead channel weights of 1000: harmless in fp32, but int8 weights (per output channel) spend
    their whole range on it, so all of conv2's real weights round to 0. The head's bias centres
    the logits on `center_images`, so that the fp32 predictions use all three classes."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b1 = np.full(4, 0.1, np.float32)
    w1[0], b1[0] = 0.01, -5.0
    w2 = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    w2[:, 0] = 1000.0
    b2 = np.zeros(8, np.float32)
    wh = rng.standard_normal((3, 8)).astype(np.float32)
    bh = np.zeros(3, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wh, "wh"), (bh, "bh"))]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wh", "bh"], [OUTPUT_NAME], name="head", transB=1),
    ]
    save_centred(path, "hostile", nodes, inits, center_images)


def save_centred(path: Path, name: str, nodes: list, inits: list, center_images: np.ndarray) -> None:
    """A 1x8x8 -> 3-class model of `nodes`, saved with its head's bias (the last initializer,
    'bh') set so that the logits average 0 on `center_images`: all three classes get used."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    import onnxruntime as ort

    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: center_images})
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(-logits.mean(0).astype(np.float32), "bh"))
    onnx.save(model, str(path))


def top1(path, x, y) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {INPUT_NAME: x})
    return float((logits.argmax(1) == y).mean() * 100)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(fp32 path, calibration images, val images, val labels = the fp32 model's own predictions)."""
    path = tmp_path_factory.mktemp("hostile") / "model.fp32.onnx"
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((48, 1, 8, 8)).astype(np.float32)
    hostile_model(path, calib)
    val = rng.standard_normal((90, 1, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: val})
    return path, calib, val, logits.argmax(1)


def test_sensitivity_ranks_the_hostile_conv_first(tmp_path, hostile):
    fp32, calib, _, _ = hostile
    int8 = tmp_path / "int8.onnx"
    ptq(fp32, int8, calib_images=calib, cfg=QuantConfig(target="x86-vnni"), progress=False)
    prepared = tmp_path / "prepared.onnx"
    from edgekd.quant.ptq import prepare

    prepare(fp32, prepared)
    ranked = quant_budget.node_sensitivity(prepared, int8, calib)
    assert [r["node"] for r in ranked][0] == "conv2"
    assert {r["node"] for r in ranked} == {"conv1", "conv2", "head"}
    worst, *rest = ranked
    # conv2's int8 output is mostly noise; the others lose a few dB at most
    assert worst["sqnr_out_db"] < 10 and worst["loss_db"] > 15
    assert all(r["loss_db"] < worst["loss_db"] - 10 for r in rest)


def test_budget_search_keeps_the_hostile_conv_float(tmp_path, hostile):
    fp32, calib, val_x, val_y = hostile
    cfg = QuantConfig(target="x86-vnni", max_drop=2.0)
    int8 = tmp_path / "int8.onnx"
    ptq(fp32, int8, calib_images=calib, cfg=cfg, progress=False)
    fp32_top1, int8_top1 = top1(fp32, val_x, val_y), top1(int8, val_x, val_y)
    assert fp32_top1 == 100.0 and int8_top1 < 80.0  # int8 is broken by conv2
    lines = []
    result = quant_budget.search(fp32, int8, cfg=cfg, measured=quant_budget.Measured(fp32_top1, int8_top1),
                                 evaluate=lambda p: top1(p, val_x, val_y), ptq_inputs=quant_budget.PtqInputs(calib),
                                 log=lines.append)
    assert result.met and result.excluded == ["conv2"]
    assert result.final_top1 >= 98.0 and result.drop <= 2.0
    assert result.max_excluded == 1 and len(result.steps) == 1 and "conv2" in lines[0]
    # the written model really has conv2 in float (weight straight from an initializer) and
    # the others quantized
    proto = onnx.load(str(int8))
    inits = {i.name for i in proto.graph.initializer}
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    assert convs["conv2"].input[1] in inits
    assert convs["conv1"].input[1] not in inits
    assert top1(int8, val_x, val_y) == result.final_top1
    json.dumps(result.to_dict())  # plain data for the stage report


def test_budget_already_met_does_nothing(tmp_path, hostile):
    fp32, calib, _, _ = hostile
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(b"untouched")
    result = quant_budget.search(fp32, int8, cfg=QuantConfig(max_drop=5.0), measured=quant_budget.Measured(90.0, 86.0),
                                 evaluate=lambda p: pytest.fail("no evaluation expected"),
                                 ptq_inputs=quant_budget.PtqInputs(calib))
    assert result.met and result.excluded == [] and result.final_top1 == 86.0
    assert int8.read_bytes() == b"untouched"


def test_error_is_a_gate_failure():
    assert issubclass(AccuracyBudgetExceeded, GateFailed) and AccuracyBudgetExceeded.exit_code == 3


TINY_RECIPE = """\
name: budget
data: {limit_train: 400, limit_test: 100, calib_size: 32}
teacher: {arch: tinycnn, arch_args: {width: 8}, epochs: 1, batch_size: 32, augment: false}
distill: {arch: tinycnn, arch_args: {width: 8}, epochs: 1, batch_size: 32, augment: false}
quantize: {max_drop: -100.0}
bench: {warmup: 1, runs: 5, min_seconds: 0}
"""


def test_impossible_budget_exits_3_and_keeps_fp32(tmp_path):
    """int8 would have to beat fp32 by 100 points: the search keeps half the nodes float, fails,
    and the run stops with exit code 3, a one-line message, the fp32 model and the record."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "budget.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "edgekd", "compress", str(recipe), "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 3, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("edgekd: error: int8 loses") and "quantize.max_drop is -100.0" in message
    assert "[quantize] budget: " in result.stderr  # each step is logged
    assert (out / "model.fp32.onnx").is_file() and not (out / "model.int8.onnx").exists()
    record = json.loads((out / "state" / "quantize-budget.json").read_text())
    budget = record["budget"]
    assert budget["met"] is False and budget["max_excluded"] == 2  # 3 convs + 1 Gemm: at most half float
    assert len(budget["kept_float"]) == 2 and [s["keep_float"] for s in budget["steps"]] == budget["kept_float"]
    assert budget["kept_float"] == [s["node"] for s in budget["sensitivity"][:2]]
    assert record["target"] in ("x86-vnni", "x86-avx2", "arm64") and record["max_drop"] == -100.0
    progress = json.loads((out / "state" / "progress.json").read_text())
    assert "export" in progress["done"] and "quantize" not in progress["done"]


def test_pipeline_stage_keeps_the_hostile_conv_float_and_records_it(tmp_path):
    """The quantize stage on the hostile model: over budget, the search keeps conv2 float, the stage
    report says so, and state/quantize-budget.json holds the same record."""
    from types import SimpleNamespace

    from edgekd.pipeline import layout
    from edgekd.pipeline.context import Context
    from edgekd.pipeline.stages import quantize as quantize_stage
    from edgekd.recipe import Recipe

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (150, 1, 8, 8), dtype=np.uint8)
    floats = images.astype(np.float32) / 255.0  # preprocess without mean/std metadata
    hostile_model(tmp_path / layout.STUDENT_ONNX, floats[:50])
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / layout.STUDENT_ONNX), providers=["CPUExecutionProvider"])
    labels = session.run(None, {INPUT_NAME: floats[50:]})[0].argmax(1)
    (tmp_path / "state").mkdir()
    ctx = Context(run_dir=tmp_path, progress=False, log=lambda line: None)
    cfg = Recipe.from_dict({"quantize": {"target": "x86-avx2", "max_drop": 10.0}}).quantize
    splits = SimpleNamespace(calib_x=images[:50], val_x=images[50:], val_y=labels)
    result = quantize_stage.run(ctx, cfg, QuantizeInputs(splits)).record
    assert result["target"] == "x86-avx2" and result["settings"]["reduce_range"] is True
    assert result["format"] == "QDQ U8S8" and result["val_top1_fp32"] == 100.0
    budget = result["budget"]
    assert budget["met"] and budget["kept_float"] == ["conv2"] and result["float_nodes"] == ["conv2"]
    # reduce_range (7-bit weights) costs a few points more than the x86-vnni test above
    assert budget["val_top1_int8_all_quantized"] < 80.0 and result["val_top1_int8"] >= 90.0
    assert top1(tmp_path / layout.INT8_ONNX, floats[50:], labels) == result["val_top1_int8"]
    latency = budget["rough_p50_ms"]  # the price of the float node, roughly
    assert set(latency) == {"fp32", "int8_all_quantized", "int8_with_float_nodes"} and min(latency.values()) > 0
    assert json.loads((tmp_path / "state" / "quantize-budget.json").read_text())["budget"] == json.loads(json.dumps(budget))


def test_warning_when_int8_is_not_faster():
    from edgekd.pipeline.stages.bench import int8_speed_warnings

    def row(name, p50):
        return SimpleRow(path=f"/run/{name}", latency_ms={"p50": p50}, provider="cpu", int8_ops=3)

    assert int8_speed_warnings([row("model.fp32.onnx", 1.0), row("model.int8.onnx", 0.5)]) == []
    (line,) = int8_speed_warnings([row("teacher.fp32.onnx", 9.0), row("model.fp32.onnx", 1.0),
                                   row("model.int8.onnx", 1.0)])
    assert "model.int8.onnx is not faster than model.fp32.onnx" in line and "p50 1.000 ms vs 1.000 ms" in line
    assert int8_speed_warnings([row("model.fp32.onnx", 1.0)]) == []  # quantize.enabled: false


class SimpleRow:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def gated_model(path: Path, center_images: np.ndarray) -> None:
    """input 1x8x8 -> conv (4 ch) -> c; gate = Sigmoid(c * [1000, 1, 1, 1]); c * gate -> GAP -> head.

    The gate's input has one channel 1000 times the others: per-tensor uint8 activations spend
    their range on it, the other channels' gate inputs round to 0, every gate reads 0.5, and
    the prediction is lost, whichever Conv/Gemm is kept float. With the element-wise ops
    (Mul, Sigmoid) float, int8 is right again."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    scale = np.array([1000.0, 1.0, 1.0, 1.0], np.float32).reshape(1, 4, 1, 1)
    wh = rng.standard_normal((3, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w, "w"), (np.zeros(4, np.float32), "b"), (scale, "scale"), (wh, "wh"), (np.zeros(3, np.float32), "bh"))]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["scaled"], name="scale_gate"),
        helper.make_node("Sigmoid", ["scaled"], ["gate"], name="gate"),
        helper.make_node("Mul", ["c", "gate"], ["gated"], name="apply_gate"),
        helper.make_node("GlobalAveragePool", ["gated"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wh", "bh"], [OUTPUT_NAME], name="head", transB=1),
    ]
    save_centred(path, "gated", nodes, inits, center_images)


def test_budget_search_keeps_the_elementwise_ops_float_as_a_group(tmp_path):
    rng = np.random.default_rng(4)
    calib, val_x = (rng.standard_normal((n, 1, 8, 8)).astype(np.float32) for n in (48, 90))
    fp32, int8 = tmp_path / "gated.fp32.onnx", tmp_path / "gated.int8.onnx"
    gated_model(fp32, calib)
    import onnxruntime as ort

    (logits,) = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: val_x})
    val_y = logits.argmax(1)
    cfg = QuantConfig(target="x86-vnni", max_drop=5.0)
    ptq(fp32, int8, calib_images=calib, cfg=cfg, progress=False)
    int8_top1 = top1(int8, val_x, val_y)
    assert int8_top1 < 90.0
    lines = []
    result = quant_budget.search(fp32, int8, cfg=cfg, measured=quant_budget.Measured(100.0, int8_top1),
                                 evaluate=lambda p: top1(p, val_x, val_y), ptq_inputs=quant_budget.PtqInputs(calib),
                                 log=lines.append)
    assert result.met and result.excluded_op_types == ["Mul", "Sigmoid"] and result.excluded == []
    assert result.steps[0]["keep_float"] == "op types Mul, Sigmoid" and len(result.steps) == 1
    assert "element-wise ops (Mul, Sigmoid) kept float" in lines[0]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops  # the conv and the head are still int8
    assert top1(int8, val_x, val_y) == result.final_top1 >= 95.0
