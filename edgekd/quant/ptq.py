"""Post-training static int8 quantization with ONNX Runtime's own tools, file to file.

fp32 ONNX -> ORT pre-processing (shape inference + graph optimization) -> calibration on
the calibration split -> QDQ model (per-channel int8 weights, uint8 or int8 activations).
The calibration method is an entry of edgekd.quant.calibration.CALIBRATORS: ONNX Runtime's
own calibration through quantize_static, or a function that computes the activation ranges,
which ONNX Runtime's QDQ quantizer then uses (quantize_with_ranges).
ONNX Runtime fuses QDQ groups into int8 kernels (QLinearConv, ...) when it loads the model;
`edgekd bench` counts them to show that int8 really runs as int8.

The activation/weight types, reduce_range, per_channel and the input-channel padding of
the first convolutions (edgekd.quant.pad) come from a target preset
(resolve_quant_settings); fields set in the recipe override it. Nodes can be kept in
float (quantize.exclude_nodes / exclude_op_types; the accuracy budget in edgekd.quant.budget
adds the most sensitive ones).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError
from edgekd.io.artifacts import atomic_path
from edgekd.quant.calibration import (
    ActivationBatches,
    ArrayCalibrationReader,
    calibrator,
    even_batch_size,
    needs_even_batches,
    tensors_data,
)
from edgekd.quant.config import QuantConfig
from edgekd.quant.graph import keep_float, shorten_names
from edgekd.quant.presets import resolve_quant_settings


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
    padded_inputs: list = field(default_factory=list)  # [{input, channels, padded_to}] (edgekd.quant.pad)
    calib_batch_size: int = 0  # the batch size calibration ran with (see calibration.even_batch_size)


def prepare(fp32_path: str | Path, prepared_path: str | Path) -> None:
    """ORT's quantization pre-processing (shape inference + graph optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=True)


def nodes_to_keep_float(proto, cfg: QuantConfig, extra: list | tuple = ()) -> list[str]:
    """Names of the nodes of the (pre-processed) model that stay float: quantize.exclude_nodes,
    every node of an op type in quantize.exclude_op_types, and `extra` (check_exclusions
    first: a name or op type the model lacks is a ConfigError)."""
    check_exclusions(proto, cfg, extra)
    wanted = set(cfg.exclude_nodes) | set(extra)
    ops = set(cfg.exclude_op_types)
    return [n.name for n in proto.graph.node if n.name in wanted or n.op_type in ops]


SHOWN_NODES = 12  # node names an error lists


def check_exclusions(proto, cfg: QuantConfig, extra: list | tuple = ()) -> None:
    """quantize.exclude_nodes (and `extra`) name nodes of the pre-processed model `proto`, and
    quantize.exclude_op_types op types it has: an entry that matches nothing would keep
    nothing float, silently. A ConfigError lists what the model has. Preflight calls this on
    the untrained student exported and pre-processed the same way (same node names)."""
    names = {n.name for n in proto.graph.node}
    unknown = [n for n in list(cfg.exclude_nodes) + list(extra) if n not in names]
    if unknown:
        known = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        more = f" and {len(known) - SHOWN_NODES} more" if len(known) > SHOWN_NODES else ""
        raise ConfigError(f"quantize.exclude_nodes: no node named {', '.join(map(repr, unknown))} in the model; "
                          f"its Conv/Gemm/MatMul nodes are: {', '.join(known[:SHOWN_NODES])}{more}")
    op_types = sorted({n.op_type for n in proto.graph.node})
    missing = [op for op in cfg.exclude_op_types if op not in op_types]
    if missing:
        raise ConfigError(f"quantize.exclude_op_types: {', '.join(_op_type_problem(op, op_types) for op in missing)}; "
                          f"the model's op types are: {', '.join(op_types)} (names as ONNX spells them)")


def _op_type_problem(op: str, op_types: list) -> str:
    """Why `op` matches no node: not an ONNX operator (maybe a misspelt one), or one the model lacks."""
    import difflib

    import onnx

    if onnx.defs.has(op):
        return f"'{op}' is an ONNX operator but the model has no {op} node"
    names = {s.name for s in onnx.defs.get_all_schemas()}
    close = [n for n in names if n.lower() == op.lower()] or difflib.get_close_matches(op, sorted(names), n=1)
    return f"'{op}' is not an ONNX operator" + (f" (did you mean {close[0]}?)" if close else "")


def ort_calibration_method(name: str):
    """The onnxruntime CalibrationMethod of the calibration method `name` (None: a method that
    computes its own ranges); a method naming one this onnxruntime lacks is a ConfigError."""
    from onnxruntime.quantization import CalibrationMethod

    method = calibrator(name)
    if method.ort_method is None:
        return None
    try:
        return CalibrationMethod[method.ort_method]
    except KeyError:
        raise ConfigError(f"calibration method '{name}' names CalibrationMethod.{method.ort_method}, "
                          f"which this onnxruntime lacks; it has {', '.join(m.name for m in CalibrationMethod)}"
                          ) from None


def quantize_with_ranges(prepared_path: str | Path, output_path: str | Path, tensors_range, *, per_channel: bool,
                         reduce_range: bool, activation_type, weight_type, nodes_to_exclude: list) -> None:
    """What quantize_static does after its calibration, on ranges computed elsewhere: ONNX
    Runtime's QDQ quantizer on the (pre-processed) model, with `tensors_range` (a TensorsData)
    for the activations and the same defaults as quantize_static (every op type it knows,
    no extra options). activation_type / weight_type: QuantType values."""
    import inspect

    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantizationMode,
        load_model_with_shape_infer,
        update_opset_version,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = update_opset_version(load_model_with_shape_infer(Path(prepared_path)), weight_type)
    arguments = dict(model=model, per_channel=per_channel, reduce_range=reduce_range, weight_qType=weight_type,
                     activation_qType=activation_type, tensors_range=tensors_range, nodes_to_quantize=[],
                     nodes_to_exclude=list(nodes_to_exclude),
                     op_types_to_quantize=sorted(set(QLinearOpsRegistry) | set(QDQRegistry)), extra_options={})
    if "static" in inspect.signature(QDQQuantizer.__init__).parameters:  # onnxruntime < 1.18
        arguments.update(mode=QuantizationMode.QLinearOps, static=True)
    quantizer = QDQQuantizer(**arguments)
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(output_path), False)


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
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekd.io.onnxfile import check_onnx_file
    from edgekd.onnx_export import INPUT_NAME
    from edgekd.progress import progress_bar
    from edgekd.quant.pad import pad_input_channels
    from edgekd.runtime.metadata import set_metadata

    # ORT's pre-processing and calibration open sessions on fp32_path (and onnx.load
    # reads its external data): it must pass the same check as a benched model. Usually
    # edgekd has just written it; on --resume or from the API it is whatever is on disk.
    check_onnx_file(fp32_path)
    settings = resolve_quant_settings(cfg, machine)
    method = calibrator(cfg.calibration)
    ort_method = ort_calibration_method(cfg.calibration)
    start = time.perf_counter()
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    # histogram calibrations need equal batches: 40 images and calib_batch_size 32 run as 2 x 20
    batch_size = (even_batch_size(len(calib_images), cfg.calib_batch_size) if needs_even_batches(method)
                  else cfg.calib_batch_size)
    with tempfile.TemporaryDirectory(prefix="edgekd-ptq-") as work:
        prepared = Path(work) / "prepared.onnx"
        prepare(fp32_path, prepared)
        excluded = nodes_to_keep_float(onnx.load(str(prepared)), cfg, extra_exclude)
        with progress_bar(total=len(calib_images), enabled=progress, desc="calibrate", unit="img", leave=False) as bar:
            reader = ArrayCalibrationReader(calib_images, INPUT_NAME, batch_size=batch_size, progress=bar)
            with atomic_path(int8_path) as tmp:
                common = dict(per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                              activation_type=types[settings["activation_type"]],
                              weight_type=types[settings["weight_type"]], nodes_to_exclude=excluded)
                if ort_method is not None:
                    extra = {"extra_options": dict(method.ort_options)} if method.ort_options else {}
                    quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
                                    calibrate_method=ort_method, **common, **extra)
                else:
                    batches = ActivationBatches(prepared, reader)
                    ranges = tensors_data(method.ranges(batches), batches.names, cfg.calibration)
                    quantize_with_ranges(prepared, tmp, ranges, **common)
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
        calib_batch_size=batch_size,
    )
