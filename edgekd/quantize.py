"""Post-training static int8 quantization with ONNX Runtime's own tools, file to file.

fp32 ONNX -> ORT pre-processing (shape inference + graph optimization) -> calibration on
the calibration split -> QDQ model (per-channel int8 weights, uint8 or int8 activations).
ONNX Runtime fuses QDQ groups into int8 kernels (QLinearConv, ...) when it loads the model;
`edgekd bench` counts them to show that int8 really runs as int8.

The activation/weight types, reduce_range, per_channel and the input-channel padding of
the first convolutions (edgekd.quantize_pad) come from a target preset
(resolve_quant_settings); fields set in the recipe override it. Nodes can be kept in
float (quantize.exclude_nodes / exclude_op_types; the accuracy budget in quant_budget.py
adds the most sensitive ones).
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import atomic_path
from .errors import ConfigError
from .recipe import QuantConfig

# Defaults per deployment target (as Optimum's AutoQuantizationConfig presets do).
TARGET_PRESETS = {
    # VNNI (AVX-512 VNNI / AVX-VNNI): U8S8 runs on the int8 dot-product instructions. Measured
    # (benchmarks/results/int8-speed-resnet20.md, int8-speed-repeat.md: ResNet-20, 28x28, batch 1,
    # 1 thread, Xeon with AVX-512 VNNI, onnxruntime 1.32): QDQ U8S8 per-channel 1.57-1.84x faster
    # than fp32 in edgekd's bench (2.02x in the shared host's fast spells, 1.66x in its slow ones),
    # every U8S8 variant (QOperator, per-tensor, reduce_range) alike, S8S8 QDQ ~0.55x (12 of 21
    # convs left float). The int8 convs are ~1.5x faster; the 9 residual Adds fp32 fuses into its
    # convs run as QLinearAdd (12%).
    # pad_input_channels_to 4: the x86 int8 conv kernel needs input channels in fours (edgekd.quantize_pad)
    "x86-vnni": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
                 "pad_input_channels_to": 4},
    # AVX2 without VNNI: U8S8 can saturate (vpmaddubsw); ONNX Runtime's docs advise reduce_range (7-bit weights)
    "x86-avx2": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True, "per_channel": True,
                 "pad_input_channels_to": 4},
    # ARM64: S8S8 (signed dot products, sdot/smmla); MLAS's ARM64 indirect conv skips layers with
    # under 64 input channels whatever their count, so no padding
    "arm64": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
              "pad_input_channels_to": 0},
    # CUDA / TensorRT: symmetric int8 activations and weights
    "cuda": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
             "pad_input_channels_to": 0},
}
# ops ONNX Runtime's QDQPropagationTransformer moves Q/DQ across (data movement only)
DQ_PROPAGATING_OPS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
                      "Resize", "Expand")
QUANT_FIELDS = ("activation_type", "weight_type", "reduce_range", "per_channel", "pad_input_channels_to")


def detect_machine() -> dict:
    """This machine's architecture and CPU flags (from /proc/cpuinfo; empty where there is none)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("flags", "Features"):
                flags.update(value.split())
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "flags": sorted(flags)}


def target_for_machine(machine: dict) -> str:
    """The preset for a machine: VNNI flags -> x86-vnni, avx2 -> x86-avx2, aarch64/arm64 -> arm64.
    Anything else gets x86-avx2 (U8S8 with reduce_range: the safe choice without VNNI)."""
    arch = str(machine.get("arch", "")).lower()
    flags = set(machine.get("flags", ()))
    if arch in ("aarch64", "arm64"):
        return "arm64"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    return "x86-avx2"


def resolve_quant_settings(cfg: QuantConfig, machine: dict | None = None) -> dict:
    """The settings a quantization uses: the target's preset, then every field the recipe sets.

    Returns {target, target_from ('recipe' or 'cpu flags'), activation_type, weight_type,
    reduce_range, per_channel, pad_input_channels_to, overrides (the fields taken from the recipe)}.
    """
    if cfg.target == "auto":
        target = target_for_machine(machine if machine is not None else detect_machine())
        source = "cpu flags"
    else:
        target, source = cfg.target, "recipe"
    settings = {"target": target, "target_from": source, **TARGET_PRESETS[target]}
    overrides = [key for key in QUANT_FIELDS if getattr(cfg, key) is not None]
    for key in overrides:
        settings[key] = getattr(cfg, key)
    settings["overrides"] = overrides
    return settings


def format_name(settings: dict) -> str:
    """'QDQ U8S8' and the like: activation type, then weight type."""
    letter = {"uint8": "U", "int8": "S"}
    return f"QDQ {letter[settings['activation_type']]}8{letter[settings['weight_type']]}8"


@dataclass
class QuantReport:
    path: str
    calibration: str
    samples: int
    activation_type: str
    weight_type: str
    per_channel: bool
    seconds: float
    target: str = ""
    reduce_range: bool = False
    settings: dict = field(default_factory=dict)
    excluded_nodes: list = field(default_factory=list)  # kept in float
    padded_inputs: list = field(default_factory=list)  # [{input, channels, padded_to}] (edgekd.quantize_pad)


class ArrayCalibrationReader:
    """Feeds calibration images to ONNX Runtime through its CalibrationDataReader protocol
    (get_next() returns one input dict, then None when the data is exhausted)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32, progress=None):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self._position = 0

    def get_next(self):
        if self._position >= len(self.images):
            return None
        batch = self.images[self._position : self._position + self.batch_size]
        self._position += len(batch)
        if self.progress is not None:
            self.progress.update(len(batch))
        return {self.input_name: batch}

    def rewind(self):
        self._position = 0


def prepare(fp32_path: str | Path, prepared_path: str | Path) -> None:
    """ORT's quantization pre-processing (shape inference + graph optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=True)


def nodes_to_keep_float(proto, cfg: QuantConfig, extra: list | tuple = ()) -> list[str]:
    """Names of the nodes of the (pre-processed) model that stay float: quantize.exclude_nodes,
    every node of an op type in quantize.exclude_op_types, and `extra`. An unknown name is a
    ConfigError that lists the quantizable node names."""
    names = [n.name for n in proto.graph.node]
    unknown = [n for n in list(cfg.exclude_nodes) + list(extra) if n not in names]
    if unknown:
        known = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        raise ConfigError(f"quantize.exclude_nodes: no node named {', '.join(map(repr, unknown))} in the model; "
                          f"its Conv/Gemm/MatMul nodes are: {', '.join(known)}")
    wanted = set(cfg.exclude_nodes) | set(extra)
    ops = set(cfg.exclude_op_types)
    return [n.name for n in proto.graph.node if n.name in wanted or n.op_type in ops]


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


def ptq(
    fp32_path: str | Path,
    int8_path: str | Path,
    *,
    calib_images: np.ndarray,
    cfg: QuantConfig,
    metadata: dict[str, str] | None = None,
    progress: bool = True,
    machine: dict | None = None,
    extra_exclude: list | tuple = (),
) -> QuantReport:
    """Quantize `fp32_path` into `int8_path` (QDQ); `calib_images` are preprocessed float32 NCHW.

    `machine` (detect_machine() form) is for quantize.target 'auto'; `extra_exclude`: node
    names kept in float on top of the recipe's (the accuracy budget search passes them)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from tqdm.auto import tqdm

    from .export import INPUT_NAME, set_metadata
    from .onnxfile import check_onnx_file
    from .quantize_pad import pad_input_channels

    # ORT's pre-processing and calibration open sessions on fp32_path (and onnx.load
    # reads its external data): it must pass the same check as a benched model. Usually
    # edgekd has just written it; on --resume or from the API it is whatever is on disk.
    check_onnx_file(fp32_path)
    settings = resolve_quant_settings(cfg, machine)
    start = time.perf_counter()
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="edgekd-ptq-") as work:
        prepared = Path(work) / "prepared.onnx"
        prepare(fp32_path, prepared)
        excluded = nodes_to_keep_float(onnx.load(str(prepared)), cfg, extra_exclude)
        with tqdm(total=len(calib_images), desc="calibrate", unit="img", disable=not progress, leave=False) as bar:
            reader = ArrayCalibrationReader(calib_images, INPUT_NAME, batch_size=cfg.calib_batch_size, progress=bar)
            with atomic_path(int8_path) as tmp:
                quantize_static(
                    str(prepared),
                    str(tmp),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=settings["per_channel"],
                    activation_type=types[settings["activation_type"]],
                    weight_type=types[settings["weight_type"]],
                    reduce_range=settings["reduce_range"],
                    calibrate_method=methods[cfg.calibration],
                    nodes_to_exclude=excluded,
                )
                proto = onnx.load(str(tmp))
                keep_float(proto, excluded, onnx.load(str(prepared)))
                padded = pad_input_channels(proto, settings["pad_input_channels_to"])
                shorten_names(proto)
                set_metadata(proto, dict(metadata or {}))
                onnx.checker.check_model(proto, full_check=True)
                onnx.save(proto, str(tmp))
    return QuantReport(
        path=str(int8_path),
        calibration=cfg.calibration,
        samples=len(calib_images),
        activation_type=settings["activation_type"],
        weight_type=settings["weight_type"],
        per_channel=settings["per_channel"],
        seconds=time.perf_counter() - start,
        target=settings["target"],
        reduce_range=settings["reduce_range"],
        settings=settings,
        excluded_nodes=excluded,
        padded_inputs=padded,
    )
