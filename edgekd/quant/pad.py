"""Pad a QDQ model's input channels to the multiple ONNX Runtime's fast int8 convolution needs.

On x86, ONNX Runtime (MLAS) runs a QLinearConv through its symmetric indirect-convolution
kernel (MlasConvSym: int8 dot products with the requantization fused) only when the input
channels are a multiple of 4. A first convolution on 1 (greyscale) or 3 (RGB) channels falls
back to im2col + a generic int8 GEMM + a separate requantization: for the zoo's ResNet-20 on
28x28 Fashion-MNIST, ORT's profiler gave that layer 48 µs in int8 against 14 µs for the fp32
convolution, and 29 µs (plus 11 µs for the Pad) with the input padded to 4 channels
(benchmarks/results/int8-speed-resnet20.md). Zero input channels read by zero weights leave
every output unchanged (0.0 quantizes exactly to the zero point, so the padded channels
contribute nothing), and the padded model computes exactly what the unpadded one does.
"""

from __future__ import annotations

import numpy as np

PAD_NODE = "pad_input_channels"


def pad_input_channels(proto, multiple: int) -> list[dict]:
    """In place: for each graph input that only feeds QuantizeLinear -> DequantizeLinear -> Conv
    nodes (group 1, int8 weight initializers behind a DequantizeLinear) whose channel count is
    not a multiple of `multiple`, insert a Pad of zero channels before the QuantizeLinear and
    give the weights matching zero channels. Returns [{input, channels, padded_to}]; a graph of
    another shape is left as it is (and listed nowhere)."""
    import onnx
    from onnx import helper, numpy_helper

    if multiple <= 1:
        return []
    graph = proto.graph
    producers = {out: n for n in graph.node for out in n.output}
    initializers = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    def consumers(tensor: str) -> list:
        return [n for n in graph.node if tensor in n.input]

    padded = []
    for graph_input in graph.input:
        quantize = consumers(graph_input.name)
        if len(quantize) != 1 or quantize[0].op_type != "QuantizeLinear" or graph_input.name in graph_outputs:
            continue
        quantize = quantize[0]
        dequantize = consumers(quantize.output[0])
        if len(dequantize) != 1 or dequantize[0].op_type != "DequantizeLinear":
            continue
        convs = consumers(dequantize[0].output[0])
        weights = [_int8_weight(conv, dequantize[0].output[0], producers, initializers) for conv in convs]
        if not convs or any(w is None for w in weights):
            continue
        channels = {w.dims[1] for w in weights}
        if len(channels) != 1 or next(iter(channels)) % multiple == 0:
            continue
        channels = next(iter(channels))
        extra = multiple - channels % multiple
        for weight in {w.name: w for w in weights}.values():
            array = numpy_helper.to_array(weight)
            zeros = np.zeros((array.shape[0], extra, *array.shape[2:]), array.dtype)
            weight.CopyFrom(numpy_helper.from_array(np.concatenate([array, zeros], axis=1), weight.name))
        rank = len(weights[0].dims)
        pads = np.zeros(2 * rank, np.int64)
        pads[rank + 1] = extra  # at the end of axis 1 (channels), nothing elsewhere
        pads_name = _fresh(graph, graph_input.name + "_channel_pads")
        padded_name = _fresh(graph, graph_input.name + "_padded")
        graph.initializer.append(numpy_helper.from_array(pads, pads_name))
        node = helper.make_node("Pad", [graph_input.name, pads_name], [padded_name], name=_fresh(graph, PAD_NODE),
                                mode="constant")
        graph.node.insert(list(graph.node).index(quantize), node)
        quantize.input[0] = padded_name
        padded.append({"input": graph_input.name, "channels": int(channels), "padded_to": int(channels + extra)})
    if padded:
        del graph.value_info[:]  # the padded tensors' shapes changed; ONNX Runtime infers them again
        onnx.checker.check_model(proto)
    return padded


def _int8_weight(conv, data_input: str, producers: dict, initializers: dict):
    """The int8 weight initializer of a group-1 Conv reading `data_input`, or None."""
    grouped = any(a.name == "group" and a.i != 1 for a in conv.attribute)
    if conv.op_type != "Conv" or conv.input[0] != data_input or grouped:
        return None
    dequantize = producers.get(conv.input[1])
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or dequantize.input[0] not in initializers:
        return None
    weight = initializers[dequantize.input[0]]
    # int8 only: MlasConvSym takes symmetric int8 weights, padding gains nothing for uint8 ones
    return weight if weight.data_type == 3 and len(weight.dims) >= 3 else None  # TensorProto.INT8


def _fresh(graph, name: str) -> str:
    taken = {t for n in graph.node for t in (n.name, *n.input, *n.output)} | {i.name for i in graph.initializer}
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate
