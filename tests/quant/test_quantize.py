"""Tests for edgekd.quantize: QDQ int8 from ONNX Runtime, per-channel weights, calibration."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from edgekd.onnx_export import INPUT_NAME, OUTPUT_NAME
from edgekd.quant import ptq as quantize
from edgekd.quant.calibration import ArrayCalibrationReader
from edgekd.quant.config import QuantConfig
from edgekd.quant.presets import format_name, resolve_quant_settings
from edgekd.quant.ptq import QuantReport, ptq
from onnxops import optimized_ops

# TinyCNN width 4: three convs with 4, 8 and 16 output channels, a Gemm head 16 -> 3
CONV_OUT_CHANNELS = [4, 8, 16]


def initializers(proto):
    return {i.name: i for i in proto.graph.initializer}


def producer(proto, name):
    return next((n for n in proto.graph.node if name in n.output), None)


def conv_weight_dq(proto):
    """For each Conv, the DequantizeLinear node feeding its weight input."""
    nodes = []
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        dq = producer(proto, conv.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", conv.name
        nodes.append(dq)
    return nodes


def activation_quantizers(proto):
    """QuantizeLinear nodes on activations (not on initializers)."""
    inits = initializers(proto)
    return [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def quantized(tmp_path, tiny_onnx, calib_images, name="int8.onnx", **cfg):
    fp32, _ = tiny_onnx
    out = tmp_path / name
    report = ptq(fp32, out, calib_images=calib_images, cfg=QuantConfig(**cfg), progress=False,
                 metadata={"edgekd.stage": "int8"})
    return out, report


@pytest.mark.parametrize(
    "activation_type, zp_type",
    [("uint8", TensorProto.UINT8), ("int8", TensorProto.INT8)],
)
def test_ptq_writes_per_channel_qdq(tmp_path, tiny_onnx, calib_images, activation_type, zp_type):
    path, report = quantized(tmp_path, tiny_onnx, calib_images, activation_type=activation_type)
    assert isinstance(report, QuantReport)
    assert report.path == str(path) and report.samples == 40 and report.calibration == "minmax"
    assert report.activation_type == activation_type and report.weight_type == "int8" and report.per_channel
    onnx.checker.check_model(str(path), full_check=True)
    assert os.listdir(tmp_path) == ["int8.onnx"]  # no temporary files beside it

    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 3
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    inits = initializers(proto)

    # per-channel int8 weights: a 1-D scale of length out_channels, along axis 0
    dqs = conv_weight_dq(proto)
    lengths = []
    for dq in dqs:
        weight, scale, zero_point = (inits[name] for name in dq.input)
        assert weight.data_type == TensorProto.INT8
        assert list(scale.dims) == [weight.dims[0]]
        assert zero_point.data_type == TensorProto.INT8
        assert not numpy_helper.to_array(zero_point).any()  # symmetric int8 weights
        axis = [a.i for a in dq.attribute if a.name == "axis"]
        assert axis in ([], [0])  # 0 is also the default
        lengths.append(scale.dims[0])
    assert sorted(lengths) == CONV_OUT_CHANNELS

    # activations: uint8 or int8 zero points, one scalar scale each; the graph input is one of them
    # (through the Pad that gives the 1-channel input the 4 channels of the x86 int8 conv kernel)
    acts = activation_quantizers(proto)
    quantized_inputs = [q.input[0] for q in acts]
    pad = producer(proto, quantized_inputs[0])
    assert INPUT_NAME in quantized_inputs or (pad.op_type == "Pad" and pad.input[0] == INPUT_NAME)
    for q in acts:
        scale, zero_point = inits[q.input[1]], inits[q.input[2]]
        assert list(scale.dims) == [] and zero_point.data_type == zp_type, q.name


def test_int8_model_runs_and_tracks_fp32(tmp_path, tiny_onnx, calib_images):
    fp32_path, model = tiny_onnx
    path, _ = quantized(tmp_path, tiny_onnx, calib_images)
    x = calib_images[:8]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (8, 3) and np.isfinite(got).all()
    # int8 is an approximation: within 10 % of the fp32 logits' range on the calibration data
    assert np.abs(got - expected).max() <= 0.1 * (expected.max() - expected.min())


def test_per_tensor_weights_when_per_channel_is_off(tmp_path, tiny_onnx, calib_images):
    path, report = quantized(tmp_path, tiny_onnx, calib_images, per_channel=False)
    assert report.per_channel is False
    proto = onnx.load(str(path))
    inits = initializers(proto)
    for dq in conv_weight_dq(proto):
        assert list(inits[dq.input[1]].dims) == []  # one scalar scale for the whole tensor


def test_uint8_weights(tmp_path, tiny_onnx, calib_images):
    path, _ = quantized(tmp_path, tiny_onnx, calib_images, weight_type="uint8")
    proto = onnx.load(str(path))
    inits = initializers(proto)
    assert {inits[dq.input[0]].data_type for dq in conv_weight_dq(proto)} == {TensorProto.UINT8}


def test_metadata_is_written(tmp_path, tiny_onnx, calib_images):
    path, _ = quantized(tmp_path, tiny_onnx, calib_images)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["edgekd.stage"] == "int8"


def test_failed_quantization_keeps_previous_file(tmp_path, tiny_onnx, calib_images, monkeypatch):
    import onnxruntime.quantization as ortq

    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous int8 model")

    def broken(*_args, **_kwargs):
        raise RuntimeError("calibration crashed")

    monkeypatch.setattr(ortq, "quantize_static", broken)
    with pytest.raises(RuntimeError, match="calibration crashed"):
        ptq(tiny_onnx[0], out, calib_images=calib_images, cfg=QuantConfig(), progress=False)
    assert out.read_bytes() == b"previous int8 model"
    assert os.listdir(tmp_path) == ["int8.onnx"]


# -- calibration -----------------------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


def test_calibration_reader_protocol():
    images = np.arange(10 * 2, dtype=np.float64).reshape(10, 1, 1, 2)
    progress = Counter()
    reader = ArrayCalibrationReader(images, "input", batch_size=4, progress=progress)
    batches = []
    while (item := reader.get_next()) is not None:
        assert set(item) == {"input"}
        batches.append(item["input"])
    # 10 images in batches of 4: 4, 4, 2, then None (and None again)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert reader.get_next() is None
    assert all(b.dtype == np.float32 and b.flags["C_CONTIGUOUS"] for b in batches)
    assert np.array_equal(np.concatenate(batches), images.astype(np.float32))
    assert progress.n == 10
    reader.rewind()
    first = reader.get_next()
    assert np.array_equal(first["input"], images[:4].astype(np.float32))


def scales(path):
    """Each Q/DQ node's scale and zero point, keyed by the node's output tensor (initializer
    names are shortened by quantize.shorten_names, output tensor names are not)."""
    proto = onnx.load(str(path))
    inits = initializers(proto)
    return {(n.output[0], role): numpy_helper.to_array(inits[name]) for n in proto.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            for role, name in zip(("scale", "zero_point"), n.input[1:3]) if name in inits}


def test_calibration_batch_size_does_not_change_minmax_scales(tmp_path, tiny_onnx, calib_images, monkeypatch):
    seen = []

    def reader_with(batch_size):
        class Reader(ArrayCalibrationReader):
            def __init__(self, images, input_name, progress=None, **_):
                super().__init__(images, input_name, batch_size=batch_size, progress=progress)

            def get_next(self):
                item = super().get_next()
                if item is not None:
                    seen.append((batch_size, len(item[self.input_name])))
                return item

        return Reader

    results = {}
    for batch_size in (8, 32):
        monkeypatch.setattr(quantize, "ArrayCalibrationReader", reader_with(batch_size))
        path, _ = quantized(tmp_path, tiny_onnx, calib_images, name=f"b{batch_size}.onnx")
        results[batch_size] = scales(path)
    # 40 images: 5 batches of 8; or 32 + 8
    assert [n for b, n in seen if b == 8] == [8] * 5
    assert [n for b, n in seen if b == 32] == [32, 8]
    assert set(results[8]) == set(results[32]) and len(results[8]) > 0
    for name in results[8]:
        assert np.array_equal(results[8][name], results[32][name]), name


def test_calib_batch_size_option_reaches_the_reader(tmp_path, tiny_onnx, calib_images, monkeypatch):
    sizes = []
    original = ArrayCalibrationReader.get_next

    def spy(self):
        item = original(self)
        if item is not None:
            sizes.append(len(item[self.input_name]))
        return item

    monkeypatch.setattr(ArrayCalibrationReader, "get_next", spy)
    a, _ = quantized(tmp_path, tiny_onnx, calib_images, name="a.onnx", calib_batch_size=16)
    assert sizes == [16, 16, 8]
    sizes.clear()
    b, _ = quantized(tmp_path, tiny_onnx, calib_images, name="b.onnx", calib_batch_size=40)
    assert sizes == [40]
    # minmax calibration does not depend on how the images are batched
    sa, sb = scales(a), scales(b)
    assert set(sa) == set(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(Exception, match="calib_batch_size must be positive"):
        QuantConfig(calib_batch_size=0)


# -- target presets -------------------------------------------------------------------------------

VNNI = {"arch": "x86_64", "flags": ["sse4_2", "avx2", "avx512f", "avx512_vnni"]}
AVXVNNI = {"arch": "x86_64", "flags": ["avx2", "avx_vnni"]}
AVX2 = {"arch": "x86_64", "flags": ["sse4_2", "avx2", "fma"]}
ARM = {"arch": "aarch64", "flags": ["fp", "asimd", "asimddp"]}
OLD_X86 = {"arch": "x86_64", "flags": ["sse4_2"]}


@pytest.mark.parametrize(
    "target, machine, expected",
    [
        ("auto", VNNI, ("x86-vnni", "uint8", "int8", False, True)),
        ("auto", AVXVNNI, ("x86-vnni", "uint8", "int8", False, True)),
        ("auto", AVX2, ("x86-avx2", "uint8", "int8", True, True)),
        ("auto", ARM, ("arm64", "int8", "int8", False, True)),
        ("auto", OLD_X86, ("x86-avx2", "uint8", "int8", True, True)),
        ("x86-vnni", ARM, ("x86-vnni", "uint8", "int8", False, True)),  # an explicit target ignores the CPU
        ("x86-avx2", VNNI, ("x86-avx2", "uint8", "int8", True, True)),
        ("arm64", VNNI, ("arm64", "int8", "int8", False, True)),
        ("cuda", AVX2, ("cuda", "int8", "int8", False, True)),
        ("openvino", ARM, ("openvino", "uint8", "int8", False, True)),  # benchmarks/results/openvino-int8-presets.md
    ],
)
def test_target_presets(target, machine, expected):
    s = resolve_quant_settings(QuantConfig(target=target), machine)
    assert (s["target"], s["activation_type"], s["weight_type"], s["reduce_range"], s["per_channel"]) == expected
    assert s["target_from"] == ("cpu flags" if target == "auto" else "recipe")
    assert s["overrides"] == []


def test_explicit_fields_override_the_preset():
    cfg = QuantConfig(target="cuda", activation_type="uint8", reduce_range=True, per_channel=False)
    s = resolve_quant_settings(cfg, VNNI)
    assert (s["activation_type"], s["weight_type"], s["reduce_range"], s["per_channel"]) == ("uint8", "int8", True, False)
    assert s["overrides"] == ["activation_type", "reduce_range", "per_channel"]
    # False is a value, not "unset": it overrides avx2's reduce_range=True
    s = resolve_quant_settings(QuantConfig(reduce_range=False), AVX2)
    assert s["target"] == "x86-avx2" and s["reduce_range"] is False and s["overrides"] == ["reduce_range"]
    assert format_name(resolve_quant_settings(QuantConfig(), ARM)) == "QDQ S8S8"


def test_recipe_reads_target_and_overrides():
    from edgekd.errors import ConfigError
    from edgekd.recipe import Recipe

    r = Recipe.from_dict({"quantize": {"target": "arm64", "weight_type": "int8", "exclude_op_types": ["Gemm"],
                                       "max_drop": None}})
    assert r.quantize.target == "arm64" and r.quantize.weight_type == "int8" and r.quantize.activation_type is None
    assert r.quantize.max_drop is None and r.quantize.exclude_op_types == ["Gemm"]
    with pytest.raises(ConfigError, match="unknown quantize.target 'tpu'"):
        Recipe.from_dict({"quantize": {"target": "tpu"}})
    assert Recipe.default().quantize.target == "auto" and Recipe.default().quantize.activation_type is None


def test_ptq_uses_the_preset_of_the_machine(tmp_path, tiny_onnx, calib_images):
    out = tmp_path / "arm.onnx"
    report = ptq(tiny_onnx[0], out, calib_images=calib_images, cfg=QuantConfig(), progress=False, machine=ARM)
    assert report.target == "arm64" and report.activation_type == "int8" and report.settings["target_from"] == "cpu flags"
    zps = {initializers(onnx.load(str(out)))[q.input[2]].data_type for q in activation_quantizers(onnx.load(str(out)))}
    assert zps == {TensorProto.INT8}
    report = ptq(tiny_onnx[0], out, calib_images=calib_images, cfg=QuantConfig(), progress=False, machine=AVX2)
    assert report.target == "x86-avx2" and report.reduce_range is True and report.activation_type == "uint8"


# -- nodes kept in float ---------------------------------------------------------------------------

CONV2 = "/features/features.2/features.2.0/Conv"


def test_excluded_nodes_stay_float(tmp_path, tiny_onnx, calib_images):
    path, report = quantized(tmp_path, tiny_onnx, calib_images, exclude_nodes=[CONV2], exclude_op_types=["Gemm"])
    assert report.excluded_nodes == [CONV2, "/fc/Gemm"]
    proto = onnx.load(str(path))
    inits = initializers(proto)
    ops = [n.op_type for n in proto.graph.node]
    nodes = {n.name: n for n in proto.graph.node}
    assert ops.count("Conv") == 3 and ops.count("Gemm") == 1
    # the excluded Conv and the Gemm read float initializers; the two other convs int8 ones
    for name in (CONV2, "/fc/Gemm"):
        weight = nodes[name].input[1]
        assert weight in inits and inits[weight].data_type == TensorProto.FLOAT, name
    others = [n for n in proto.graph.node if n.op_type == "Conv" and n.name != CONV2]
    assert all(producer(proto, n.input[1]).op_type == "DequantizeLinear" for n in others)
    # and ONNX Runtime runs it that way: 2 QLinearConv, not 3 (its WeightBiasQuantization would
    # re-quantize a float Conv between DQ and Q)
    ops = optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") == 2 and "QGemm" not in ops
    assert sum(op in ("Conv", "FusedConv") for op in ops) == 1 and "Gemm" in ops
    x = calib_images[:4]
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})
    with torch.no_grad():
        expected = tiny_onnx[1](torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 0.1 * (expected.max() - expected.min())


def test_unknown_excluded_node_is_a_config_error(tmp_path, tiny_onnx, calib_images):
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="no node named 'conv9'.*/fc/Gemm"):
        quantized(tmp_path, tiny_onnx, calib_images, exclude_nodes=["conv9"])
    assert not (tmp_path / "int8.onnx").exists()


def test_short_names_make_a_smaller_file_that_computes_the_same(tmp_path, tiny_onnx, calib_images, monkeypatch):
    short, _ = quantized(tmp_path, tiny_onnx, calib_images, name="short.onnx")
    monkeypatch.setattr(quantize, "shorten_names", lambda proto: None)
    long, _ = quantized(tmp_path, tiny_onnx, calib_images, name="long.onnx")
    assert os.path.getsize(short) < os.path.getsize(long)
    a, b = onnx.load(str(short)), onnx.load(str(long))
    assert len(a.graph.value_info) == 0
    # Q/DQ nodes and the initializers only they read are renamed; activation tensors keep their names
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert {o for n in a.graph.node for o in n.output} == {o for n in b.graph.node for o in n.output}
    assert all(len(n.name) <= 6 for n in a.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    x = calib_images[:8]
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
           for p in (short, long)]
    assert np.array_equal(run[0], run[1])
