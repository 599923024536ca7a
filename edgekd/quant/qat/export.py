"""Export of a QAT model (edgekd.quant.qat) to QDQ ONNX: export_qdq runs torch.onnx.export, then
the graph rewrites below turn its output into the QDQ form ONNX Runtime fuses into int8 kernels and stores compactly, as its own
quantizer writes it: plain initializers for every constant, int8 weights, int32 biases on
the s_in * s_w grid, and no ReLU/Clip between an op and the QuantizeLinear that clamps anyway.
Each function edits a ModelProto in place and leaves the values the graph computes unchanged.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.onnx_export import ExportConfig
from edgekd.quant.qat.prepare import (
    INT32_MAX,
    QuantConv2d,
    QuantLinear,
    activation_quantizers,
    weight_scale,
)


def export_qdq(qmodel: nn.Module, path: str | Path, *, input_shape: tuple[int, int, int], metadata: dict[str, str],
               opset: int = ExportConfig.opset, pad_input_channels_to: int = 0) -> list[dict]:
    """Write the fake-quant model as a QDQ ONNX model: QuantizeLinear -> DequantizeLinear for
    every activation, int8 weight initializers with a DequantizeLinear (per channel, axis 0),
    int32 biases with scale s_in * s_w; ONNX Runtime fuses these groups into int8 kernels.
    pad_input_channels_to: as the PTQ path (edgekd.quant.pad); returns what it padded."""
    import warnings

    import onnx

    from edgekd.io.artifacts import atomic_path
    from edgekd.onnx_export import INPUT_NAME, OUTPUT_NAME
    from edgekd.quant.graph import shorten_names
    from edgekd.quant.pad import pad_input_channels
    from edgekd.runtime.metadata import set_metadata

    if opset < 13:
        raise ConfigError("QAT export needs opset >= 13 (per-channel QuantizeLinear)")
    model = copy.deepcopy(qmodel).eval()
    if not all(bool(q.initialized) for q in activation_quantizers(model)):
        raise ConfigError("the QAT model has activation quantizers without a range: calibrate it first")
    _freeze_weights(model)
    example = torch.zeros(2, *input_shape)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        constants_as_initializers(proto)  # the rewrites below
        store_integer_weights(proto)
        remove_clamps_before_quantize(proto)
        padded = pad_input_channels(proto, pad_input_channels_to)
        shorten_names(proto)  # as the PTQ path writes them: a smaller file
        set_metadata(proto, metadata)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return padded


@torch.no_grad()
def _freeze_weights(model: nn.Module) -> None:
    """Weight scales as buffers and biases rounded in place, so that the exported graph holds
    constants (Q of an initializer, which store_integer_weights turns into int8) rather than
    the ops that compute them."""
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            _, bias = m.quantized_weight_and_bias()
            m.register_buffer("frozen_scale", weight_scale(m.weight, m.weight_qmax))
            if bias is not None:
                m.bias.copy_(bias)


def constants_as_initializers(proto) -> None:
    """In place: Constant nodes become initializers, and Identity nodes of an initializer (the
    exporter's way of sharing one constant) are bypassed, so every scale, zero point and weight
    is a plain initializer, the form ONNX Runtime's QDQ fusions look for."""
    from onnx import numpy_helper

    graph = proto.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None:
            continue
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0]))
        graph.node.remove(node)
    # a one-element scale or zero point as a scalar: ONNX Runtime's QDQ fusions for Add and
    # the like accept only scalars for per-tensor quantization (the exporter writes shape [1])
    qdq_params = {name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  for name in n.input[1:]}
    for i, init in enumerate(graph.initializer):
        if init.name in qdq_params and list(init.dims) == [1]:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).reshape(()), init.name))
    inits = {i.name for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        if node.input[0] not in inits or node.output[0] in graph_outputs:
            continue
        for other in graph.node:
            for i, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[i] = node.input[0]
        graph.node.remove(node)


def store_integer_weights(proto) -> None:
    """In place: each QuantizeLinear of a constant (a weight) becomes an int8 initializer read
    by its DequantizeLinear, and each float bias of a Conv/Gemm whose input and weight are
    dequantized becomes an int32 initializer + DequantizeLinear (scale s_in * s_w, zero 0).
    The values are the ones the graph computed anyway (ONNX rounds half to even, as torch does)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    def add_initializer(array, name):
        graph.initializer.append(numpy_helper.from_array(array, name))
        inits[name] = graph.initializer[-1]

    def axis_of(node):
        return next((a.i for a in node.attribute if a.name == "axis"), 1)

    producers = {o: n for n in graph.node for o in n.output}
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        weight, scale, zero = value(q.input[0]), value(q.input[1]), value(q.input[2])
        if weight is None or scale is None or zero is None:
            continue  # an activation
        shape = [1] * weight.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis_of(q)] = -1
        info = np.iinfo(zero.dtype)
        quantized = np.clip(np.rint(weight / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64),
                            info.min, info.max).astype(zero.dtype)
        name = q.output[0] + "_int"  # unique per QuantizeLinear
        add_initializer(quantized, name)
        for node in graph.node:
            for i, inp in enumerate(node.input):
                if inp == q.output[0]:
                    node.input[i] = name
        graph.node.remove(q)
    producers = {o: n for n in graph.node for o in n.output}
    for node in [n for n in graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) == 3]:
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        bias = value(node.input[2])
        if bias is None or not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        scale = (value(x_dq.input[1]).astype(np.float64) * value(w_dq.input[1]).astype(np.float64)).astype(np.float32)
        q_bias = np.clip(np.rint(bias / scale), -INT32_MAX, INT32_MAX).astype(np.int32)
        base = node.output[0] + "_bias"  # unique per node: the exporter may share one bias tensor
        add_initializer(q_bias, base + "_quantized")
        shape = (-1,) if scale.size > 1 else ()  # per channel, or one scale (a scalar, as ONNX wants it)
        add_initializer(scale.reshape(shape), base + "_scale")
        add_initializer(np.zeros(scale.size, np.int32).reshape(shape), base + "_zero_point")
        dq = helper.make_node("DequantizeLinear", [base + "_quantized", base + "_scale", base + "_zero_point"],
                              [base + "_dequantized"], name=base + "_DequantizeLinear", axis=0)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[2] = dq.output[0]
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    for const in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(const)


def remove_clamps_before_quantize(proto) -> None:
    """In place: drop each Relu (or Clip) whose only consumer is a QuantizeLinear whose integer
    range lies inside the clamp (zero point at qmin after a ReLU): Q(relu(a)) == Q(a) there, as
    the clamp at qmin does the ReLU. ONNX Runtime's own quantizer removes them the same way;
    without it an Add -> Relu -> Q would stay a float Add (only Conv/MatMul absorb a ReLU)."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type in ("Relu", "Clip")]:
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or node.output[0] in graph_outputs:
            continue
        q = users[0]
        scale, zero = inits.get(q.input[1]), inits.get(q.input[2])
        if scale is None or zero is None or scale.size != 1:
            continue
        info = np.iinfo(zero.dtype)
        q_min = (info.min - int(zero.reshape(-1)[0])) * float(scale.reshape(-1)[0])
        q_max = (info.max - int(zero.reshape(-1)[0])) * float(scale.reshape(-1)[0])
        low, high = 0.0, np.inf
        if node.op_type == "Clip":
            bounds = [inits.get(name) if name else None for name in list(node.input[1:3]) + [""] * 2][:2]
            if any(name and b is None for name, b in zip(list(node.input[1:3]), bounds)):
                continue  # bounds computed at run time
            low = float(bounds[0]) if bounds[0] is not None else -np.inf
            high = float(bounds[1]) if bounds[1] is not None else np.inf
        if not (q_min >= low - 1e-6 and q_max <= high + 1e-6):
            continue
        q.input[0] = node.input[0]
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # a removed Clip's bounds
        graph.initializer.remove(init)
