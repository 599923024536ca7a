"""Rewrites of the QDQ model ONNX Runtime's quantizer writes: excluded nodes made to really
read float tensors (keep_float), and short names for what only the file needs (shorten_names)."""

from __future__ import annotations

# ops ONNX Runtime's QDQPropagationTransformer moves Q/DQ across (data movement only)
DQ_PROPAGATING_OPS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
                      "Resize", "Expand")


def keep_float(proto, names: list | tuple, prepared) -> None:
    """Make each excluded Conv/Gemm of the QDQ model `proto` read the float tensor instead of
    its QuantizeLinear -> DequantizeLinear copy (in place); `prepared` is the pre-processed fp32
    model it was quantized from.

    Without this, ONNX Runtime's WeightBiasQuantization graph transformer (level basic) finds
    DQ -> Conv(float weight) -> [Relu|Clip] -> Q (after moving Q up through MaxPool and the
    like), quantizes the float weight per tensor itself and runs the node as QLinearConv: the
    excluded node would not stay float. A Relu/Clip the quantizer folded into the Q's range
    is put back in float. A Q/DQ pair between the node and a graph output is removed too."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    fp32_producers = {o: n for n in prepared.graph.node for o in n.output}
    graph_outputs = {o.name for o in proto.graph.output}
    nodes = {n.name: n for n in proto.graph.node}

    def consumers(tensor):
        return [n for n in proto.graph.node if tensor in n.input]

    for name in names:
        node = nodes.get(name)
        if node is None or node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        # the node reads the float tensor before its Q -> DQ; and so on back through the ops
        # ONNX Runtime moves a DequantizeLinear across (MaxPool, Reshape, ...)
        reader = node
        while (prev := producers.get(reader.input[0])) is not None:
            if prev.op_type in DQ_PROPAGATING_OPS:
                reader = prev
                continue
            q = producers.get(prev.input[0]) if prev.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                break
            dq, source = prev, q.input[0]
            fp32_source, actual = fp32_producers.get(source), producers.get(source)
            if (fp32_source is not None and fp32_source.op_type in ("Relu", "Clip")
                    and (actual is None or actual.op_type != fp32_source.op_type)):
                # the quantizer folded this Relu/Clip into the Q's range: the pre-Q tensor lacks
                # it. Read the DQ output through a float copy of it instead (a no-op on values
                # in the Q's range, and the producer keeps its int8 kernel); ORT moves no DQ
                # across a Relu or Clip
                if source + "_float" in producers:  # restored already, for another excluded node
                    reader.input[0] = source + "_float"
                    break
                restored = onnx_node_copy(fp32_source, dq.output[0], source + "_float")
                producers[restored.output[0]] = restored
                have = {i.name for i in proto.graph.initializer}
                for init in prepared.graph.initializer:  # a Clip's min and max
                    if init.name in restored.input[1:] and init.name not in have:
                        proto.graph.initializer.append(init)
                proto.graph.node.insert(list(proto.graph.node).index(reader), restored)
                reader.input[0] = restored.output[0]
                break
            reader.input[0] = source
            if not consumers(dq.output[0]):
                proto.graph.node.remove(dq)
                if not consumers(q.output[0]) and q.output[0] not in graph_outputs:
                    proto.graph.node.remove(q)
            after = producers.get(source)
            if after is None or after.op_type not in DQ_PROPAGATING_OPS:
                break
            reader = after
        # output: Q -> DQ straight into a graph output (the logits) is removed
        out_consumers = consumers(node.output[0])
        if len(out_consumers) == 1 and out_consumers[0].op_type == "QuantizeLinear":
            q_out = out_consumers[0]
            dqs = consumers(q_out.output[0])
            if len(dqs) == 1 and dqs[0].op_type == "DequantizeLinear" and dqs[0].output[0] in graph_outputs:
                node.output[0] = dqs[0].output[0]
                proto.graph.node.remove(dqs[0])
                proto.graph.node.remove(q_out)
    used = {i for n in proto.graph.node for i in n.input}
    for init in [i for i in proto.graph.initializer if i.name not in used]:
        proto.graph.initializer.remove(init)


def shorten_names(proto) -> None:
    """Short names for what only the file needs to name (in place): the Q/DQ nodes and the
    initializers that only Q/DQ nodes read (int8 weights, scales, zero points), and no
    value_info (shapes ONNX Runtime infers again). ORT's quantizer names each of them after a
    tensor ('/layers/layers.0/conv2/Conv_output_0_DequantizeLinear_Output', ...): for ResNet-20
    the int8 file went from 331,104 to 309,642 bytes (fp32/int8 3.31x -> 3.54x; see
    benchmarks/results/int8-speed-resnet20.md). Activation tensor names and the other nodes'
    names stay: the accuracy budget matches them against the fp32 model."""
    graph = proto.graph
    del graph.value_info[:]
    taken = {n.name for n in graph.node} | {t for n in graph.node for t in (*n.input, *n.output)}
    taken |= {i.name for i in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    counter = iter(range(10**9))

    def fresh(prefix: str) -> str:
        while (name := f"{prefix}{next(counter)}") in taken:
            pass
        taken.add(name)
        return name

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for node in qdq:
        node.name = fresh("q" if node.op_type == "QuantizeLinear" else "dq")
    readers: dict[str, set] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, set()).add(node.op_type)
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    renamed = {}
    for init in graph.initializer:
        if init.name not in keep and readers.get(init.name) and readers[init.name] <= {"QuantizeLinear", "DequantizeLinear"}:
            renamed[init.name] = init.name = fresh("w")
    for node in qdq:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]


def onnx_node_copy(node, input: str, output: str):
    """A copy of a one-output node (a Relu or a Clip of the fp32 model) from `input` to `output`."""
    import onnx

    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = node.name + "_float"
    copy.input[0] = input
    copy.output[:] = [output]
    return copy
