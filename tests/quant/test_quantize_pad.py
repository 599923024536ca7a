"""Input-channel padding of int8 models for ONNX Runtime's x86 int8 convolution (edgekd.quantize_pad)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekd.onnx_export import INPUT_NAME
from edgekd.quant.config import QuantConfig
from edgekd.quant.pad import pad_input_channels
from edgekd.quant.presets import resolve_quant_settings
from edgekd.quant.ptq import ptq

VNNI = {"arch": "x86_64", "flags": ["avx2", "avx512_vnni"]}
ARM = {"arch": "aarch64", "flags": ["asimddp"]}


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]


def first_conv_weight(proto):
    """The int8 weight initializer behind the DequantizeLinear of the graph's first Conv."""
    inits = {i.name: i for i in proto.graph.initializer}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    dq = next(n for n in proto.graph.node if conv.input[1] in n.output)
    return numpy_helper.to_array(inits[dq.input[0]])


def optimized_op_counts(path, tmp_path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    return {op: ops.count(op) for op in set(ops)}


def test_presets_pad_on_x86_only():
    assert resolve_quant_settings(QuantConfig(), VNNI)["pad_input_channels_to"] == 4
    assert resolve_quant_settings(QuantConfig(target="x86-avx2"), VNNI)["pad_input_channels_to"] == 4
    assert resolve_quant_settings(QuantConfig(), ARM)["pad_input_channels_to"] == 0
    assert resolve_quant_settings(QuantConfig(target="cuda"), VNNI)["pad_input_channels_to"] == 0
    s = resolve_quant_settings(QuantConfig(pad_input_channels_to=0), VNNI)
    assert s["pad_input_channels_to"] == 0 and s["overrides"] == ["pad_input_channels_to"]


def test_grey_input_is_padded_to_four_channels_and_computes_the_same(tmp_path, tiny_onnx, calib_images):
    fp32, _ = tiny_onnx
    padded, plain = tmp_path / "padded.onnx", tmp_path / "plain.onnx"
    report = ptq(fp32, padded, calib_images=calib_images, cfg=QuantConfig(target="x86-vnni"), progress=False)
    ptq(fp32, plain, calib_images=calib_images, cfg=QuantConfig(target="x86-vnni", pad_input_channels_to=0),
        progress=False)
    assert report.padded_inputs == [{"input": INPUT_NAME, "channels": 1, "padded_to": 4}]

    proto = onnx.load(str(padded))
    pad = next(n for n in proto.graph.node if n.op_type == "Pad")
    assert pad.input[0] == INPUT_NAME
    pads = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == pad.input[1]))
    assert pads.tolist() == [0, 0, 0, 0, 0, 3, 0, 0]  # 3 channels at the end of axis 1, nothing else
    quantize = next(n for n in proto.graph.node if pad.output[0] in n.input)
    assert quantize.op_type == "QuantizeLinear"
    weight = first_conv_weight(proto)
    plain_weight = first_conv_weight(onnx.load(str(plain)))
    assert weight.shape == (4, 4, 3, 3) and plain_weight.shape == (4, 1, 3, 3)
    np.testing.assert_array_equal(weight[:, :1], plain_weight)
    assert not weight[:, 1:].any()

    # exactly the same logits: the extra channels are zero input read by zero weights
    np.testing.assert_array_equal(run(padded, calib_images), run(plain, calib_images))
    # and ONNX Runtime still fuses every Conv into QLinearConv
    assert optimized_op_counts(padded, tmp_path).get("QLinearConv") == optimized_op_counts(plain, tmp_path)["QLinearConv"] == 3


def test_rgb_input_is_padded_and_arm_and_aligned_inputs_are_not(tmp_path, make_tiny_cnn):
    from edgekd.onnx_export import ExportConfig, to_onnx

    images = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    for channels, machine, expected in ((3, VNNI, [{"input": INPUT_NAME, "channels": 3, "padded_to": 4}]),
                                        (3, ARM, []), (4, VNNI, []), (8, VNNI, [])):
        fp32 = tmp_path / f"c{channels}.onnx"
        to_onnx(make_tiny_cnn(in_channels=channels).eval(), fp32, input_shape=(channels, 8, 8), cfg=ExportConfig(),
                metadata={})
        out = tmp_path / f"c{channels}-{machine['arch']}.onnx"
        report = ptq(fp32, out, calib_images=images[:, :channels].repeat(channels // 3 + 1, axis=1)[:, :channels],
                     cfg=QuantConfig(), progress=False, machine=machine)
        assert report.padded_inputs == expected, (channels, machine)
        assert any(n.op_type == "Pad" for n in onnx.load(str(out)).graph.node) == bool(expected)


def qdq_graph(extra_consumer: str | None = None, group: int = 1):
    """input (1 channel) -> Q -> DQ -> Conv(int8 weight), optionally a second reader of the DQ."""
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(np.ones((group * 4, 1, 3, 3), np.int8), "w_q"),
        numpy_helper.from_array(np.full(group * 4, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(group * 4, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [INPUT_NAME, "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["xdq", "w"], ["y"], pads=[1, 1, 1, 1], group=group),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, group * 4, 6, 6])]
    if extra_consumer:
        nodes.append(helper.make_node(extra_consumer, ["xdq"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, group, 6, 6]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                                          [1, group, 6, 6])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graphs_of_another_shape_are_left_alone():
    proto = qdq_graph()
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})
    assert pad_input_channels(proto, 4) == [{"input": INPUT_NAME, "channels": 1, "padded_to": 4}]
    after = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})
    np.testing.assert_array_equal(after[0], before[0])
    for proto in (qdq_graph(extra_consumer="Relu"),  # the quantized input feeds a non-conv too
                  qdq_graph(group=2)):  # a grouped conv: its channels are per group
        before = proto.SerializeToString()
        assert pad_input_channels(proto, 4) == []
        assert proto.SerializeToString() == before
    proto = qdq_graph()
    assert pad_input_channels(proto, 0) == [] and pad_input_channels(proto, 1) == []


def test_recipe_validates_the_multiple():
    from edgekd.errors import ConfigError
    from edgekd.recipe import Recipe

    assert Recipe.from_dict({"quantize": {"pad_input_channels_to": 8}}).quantize.pad_input_channels_to == 8
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="pad_input_channels_to"):
            Recipe.from_dict({"quantize": {"pad_input_channels_to": bad}})


def test_sensitivity_still_ranks_the_padded_first_conv(tmp_path, tiny_onnx, calib_images):
    from edgekd.quant.budget import node_sensitivity
    from edgekd.quant.ptq import prepare

    fp32, _ = tiny_onnx
    prepared = tmp_path / "prepared.onnx"
    prepare(fp32, prepared)
    ranked = {}
    for pad in (4, 0):
        out = tmp_path / f"pad{pad}.onnx"
        ptq(fp32, out, calib_images=calib_images, cfg=QuantConfig(target="x86-vnni", pad_input_channels_to=pad),
            progress=False)
        ranked[pad] = {r["node"]: r for r in node_sensitivity(prepared, out, calib_images)}
    assert set(ranked[4]) == set(ranked[0]) and len(ranked[4]) == 4  # 3 convs and the Gemm
    for node, entry in ranked[0].items():
        assert ranked[4][node]["sqnr_in_db"] == pytest.approx(entry["sqnr_in_db"], abs=0.01), node
        assert ranked[4][node]["loss_db"] == pytest.approx(entry["loss_db"], abs=0.01), node


def test_qat_export_pads_too_and_computes_the_same(tmp_path, make_tiny_cnn):
    from edgekd.quant.qat.export import export_qdq
    from edgekd.quant.qat.prepare import prepare_qat
    from edgekd.quant.qat.train import calibrate

    qmodel = prepare_qat(make_tiny_cnn())
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calibrate(qmodel, images)
    qmodel.eval()
    padded = export_qdq(qmodel, tmp_path / "padded.onnx", input_shape=(1, 8, 8), metadata={}, pad_input_channels_to=4)
    plain = export_qdq(qmodel, tmp_path / "plain.onnx", input_shape=(1, 8, 8), metadata={})
    assert padded == [{"input": INPUT_NAME, "channels": 1, "padded_to": 4}] and plain == []
    x = images.numpy()
    np.testing.assert_array_equal(run(tmp_path / "padded.onnx", x), run(tmp_path / "plain.onnx", x))
    assert first_conv_weight(onnx.load(str(tmp_path / "padded.onnx"))).shape[1] == 4
