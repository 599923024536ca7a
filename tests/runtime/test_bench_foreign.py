"""`edgekd bench` on ONNX files that edgekd did not make, built here with onnx.helper:
old opsets, odd input names, fixed batch dims, 4-D logits, and inputs that are not
images (a feature vector, int64 token ids) benched on synthetic input."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekd.cli import main
from edgekd.runtime import bench
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.inputs import SYNTHETIC_AGREEMENT_SAMPLES, id_limit, synthetic

# foreign models have no edgekd metadata: they state x/255 (--scale 1/255)
CFG = BenchConfig(warmup=1, runs=3, min_seconds=0.0, preprocess={"scale": "1/255"})
FAST = ["--warmup", "0", "--runs", "3", "--min-seconds", "0", "--no-progress", "--scale", "1/255"]


def _save(nodes, inputs, outputs, inits, path, opset):
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="not-edgekd")
    model.ir_version = 4 if opset < 11 else 7  # what exporters of that time wrote
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def image_net(path, opset, *, name="input:0", batch=2, four_d=True):
    """Conv -> Relu -> GlobalAveragePool -> 1x1 Conv: (batch, 3, 1, 1) logits that are the
    per-channel means of a 3-channel 4x4 image (identity weights), so the predicted class
    is the brightest channel."""
    eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    inits = [numpy_helper.from_array(eye, "W1"), numpy_helper.from_array(eye, "W2")]
    nodes = [helper.make_node("Conv", [name, "W1"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Conv", ["p", "W2"], ["out"])]
    out_shape = [batch, 3, 1, 1]
    if not four_d:
        nodes.append(helper.make_node("Flatten", ["out"], ["flat"]))
        out_shape = [batch, 3]
    return _save(nodes, [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 3, 4, 4])],
                 [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)], inits, path, opset)


def _brightest_channel_set(path, n=5):
    """n 3x4x4 images, image i brightest in channel i % 3; the labels say so."""
    x = np.full((n, 3, 4, 4), 10, np.uint8)
    y = np.arange(n) % 3
    x[np.arange(n), y] = 200
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
def test_image_model_odd_name_fixed_batch_4d_logits(tmp_path, opset):
    model = image_net(tmp_path / f"foreign op{opset}.onnx", opset)
    (row,) = bench.bench([model], cfg=CFG, progress=False)  # synthetic input
    assert row.input_shape == [2, 3, 4, 4] and row.batch_size == 2 and row.stage is None
    assert row.top1 is None and row.input_source == "synthetic"
    assert row.notes == ["synthetic input (no eval set): accuracy not measured"]
    assert row.provider_nodes == {"CPUExecutionProvider": sum(row.op_counts.values())}
    # With an eval set of 5 images (the fixed batch of 2 is padded for the last one): all right.
    (row,) = bench.bench([model], eval_set=_brightest_channel_set(tmp_path / "eval.npz"), cfg=CFG, progress=False)
    assert row.top1 == 100.0 and row.samples == 5 and row.input_source == "eval" and row.notes == []


def test_fixed_batch_sweep_gives_one_row(tmp_path):
    model = image_net(tmp_path / "m.onnx", 9)
    rows = bench.bench([model], cfg=CFG, progress=False, sweep=bench.Sweep(batch_sizes=[1, 8]))
    assert [r.batch_size for r in rows] == [2]


def vector_net(path, opset=9):
    """A float feature vector [N, 10] -> MatMul -> [N, 3]: not an image."""
    w = np.arange(30, dtype=np.float32).reshape(10, 3) / 30
    return _save([helper.make_node("MatMul", ["features", "W"], ["scores"])],
                 [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 10])],
                 [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
                 [numpy_helper.from_array(w, "W")], path, opset)


VOCAB = 50


def token_net(path, opset=13, bias=0.0):
    """int64 token ids [N, 6] -> Gather(embedding 50 x 4) -> ReduceMean over tokens -> Gemm
    -> [N, 3] (+ bias on every output)."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((VOCAB, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "token_ids"], ["e"], axis=0),
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "W", "B"], ["logits"])]
    inits = [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.full(3, bias, np.float32), "B")]
    return _save(nodes, [helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["N", 6])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits, path, opset)


def test_vector_input_is_benched_on_synthetic_input_even_with_an_eval_set(tmp_path):
    model = vector_net(tmp_path / "vector.onnx")
    eval_set = _brightest_channel_set(tmp_path / "eval.npz")
    for kwargs, why in (({}, "no eval set"), ({"eval_set": eval_set}, "input 'features' is tensor(float) ['batch', 10]")):
        (row,) = bench.bench([model], cfg=dataclasses.replace(CFG, batch_size=4), progress=False, **kwargs)
        assert row.input_shape == [4, 10] and row.top1 is None and row.samples == 0
        assert row.input_source == "synthetic" and len(row.notes) == 1
        assert why in row.notes[0] and row.notes[0].endswith("accuracy not measured")


def test_token_input_gets_ids_inside_the_vocabulary(tmp_path):
    model = token_net(tmp_path / "tokens.onnx")
    assert id_limit(model, "token_ids") == VOCAB  # from the Gather's embedding rows
    ids = synthetic([64, 6], np.int64, id_limit=VOCAB)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < VOCAB and len(np.unique(ids)) > 10
    (row,) = bench.bench([model], cfg=CFG, progress=False)
    assert row.input_shape == [1, 6] and row.top1 is None and row.input_source == "synthetic"
    assert row.provider_nodes == {"CPUExecutionProvider": sum(row.op_counts.values())}


def test_token_model_against_a_shifted_reference_on_synthetic_input(tmp_path):
    """The reference adds 0.5 to every logit: argmax unchanged, max abs difference 0.5."""
    model, shifted = token_net(tmp_path / "tokens.onnx"), token_net(tmp_path / "shifted.onnx", bias=0.5)
    (row,) = bench.bench([model], cfg=CFG, progress=False, reference=shifted)
    ref = row.reference
    assert ref["inputs"] == "synthetic" and ref["samples"] == SYNTHETIC_AGREEMENT_SAMPLES
    assert ref["argmax_match"] == 100.0 and ref["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)


def test_cli_json_for_foreign_models(tmp_path):
    paths = [image_net(tmp_path / "img.onnx", 9), vector_net(tmp_path / "vec.onnx"), token_net(tmp_path / "tok.onnx")]
    result = CliRunner().invoke(main, ["bench", *map(str, paths), "--json", *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)["models"]
    assert [m["name"] for m in models] == ["img", "vec", "tok"]
    assert all(m["top1"] is None and m["notes"] and m["stage"] is None for m in models)
    assert [m["input_shape"] for m in models] == [[2, 3, 4, 4], [1, 10], [1, 6]]
    table = CliRunner().invoke(main, ["bench", *map(str, paths), *FAST], catch_exceptions=False).output
    assert "tok: synthetic input (no eval set): accuracy not measured" in table.splitlines()
