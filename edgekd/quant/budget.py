"""The accuracy budget of int8: keep the most quantization-sensitive nodes in float.

When int8 loses more than quantize.max_drop top-1 points on the val split, every
Conv/Gemm/MatMul node is ranked by how much quantization error it adds, measured with
ONNX Runtime's own debugging tools (onnxruntime.quantization.qdq_loss_debug): the fp32
(pre-processed) and the QDQ model both run on calibration images with every intermediate
tensor saved, and for each node the signal-to-quantization-noise ratio (SQNR, dB) of its
input and of its output against fp32 is computed. The node's score is the SQNR it loses
(input SQNR - output SQNR, both capped at 60 dB): a node whose int8 weights cannot represent it (an outlier
channel that takes the whole int8 range) loses tens of dB.

First, the element-wise activations (ELEMENTWISE_OPS: the Sigmoid and Mul of SiLU and
squeeze-and-excitation, hard-swish, ...) are kept in float as a group, once: their int8
kernels add error at every block and save little time, and a per-node search over their
dozens of nodes would take as many re-quantizations (measured on torchvision efficientnet_b0
at 28x28: fp32 53.9 %, all int8 49.7 %, element-wise ops float 53.1 %). The group stays float
only when it helps. Then the nodes are kept in float one at a time, most sensitive first,
re-quantizing and re-evaluating each time, until the drop fits the budget or half of the
nodes are float (then the budget fails).

The budget knows the size of the val split: one image there is 100 / len(val) top-1 points,
the smallest difference it can resolve, and a drop of a few images is noise (on 18 images
one image is 5.6 points). So the drop allowed is max(max_drop, RESOLVABLE_IMAGES images'
worth; a negative max_drop is taken as given): allowed_drop(); exceeds_budget() is the
one comparison the quantize stage and search() make, and budget_summary() states the
resolution in the record and the log.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.quant.config import QuantConfig

SENSITIVE_OPS = ("Conv", "Gemm", "MatMul")
ELEMENTWISE_OPS = ("Sigmoid", "Mul", "HardSigmoid", "HardSwish", "Tanh")  # kept float as a group first


SENSITIVITY_IMAGES = 64  # calibration images used to compare activations


# SQNR above this counts as exact: uint8 images quantize without error (~145 dB), and the
# first layer's fine 40 dB output must not look like a 100 dB loss
SQNR_CAP_DB = 60.0


DQ_SUFFIX = "_DequantizeLinear_Output"  # ORT's name for a dequantized activation


# The budget never fails on a drop of this many val images or fewer: a difference the val
# split cannot tell from noise (two models that differ on a handful of borderline images)
RESOLVABLE_IMAGES = 3


def resolution(val_size: int | None) -> float | None:
    """Top-1 points one val image is worth (100 / val_size): the smallest difference the
    budget can resolve; None when the size is unknown or zero."""
    return 100.0 / val_size if val_size else None


def min_val_images(max_drop: float | None) -> int | None:
    """The fewest val images that can judge a budget of max_drop top-1 points: one image must
    be worth at most the budget (100 / val_size <= max_drop), else a drop of one image
    already exceeds it and allowed_drop widens the budget to several times what was asked.
    None for no budget (None), and for 0 or below, which no val size resolves (a negative
    budget is compared as given)."""
    if max_drop is None or max_drop <= 0:
        return None
    return max(1, math.ceil(round(100.0 / max_drop, 9)))


def allowed_drop(max_drop: float | None, val_size: int | None) -> float | None:
    """The drop the budget allows: max(max_drop, RESOLVABLE_IMAGES * 100 / val_size); None
    (no budget) when max_drop is None; max_drop alone when the val size is unknown or
    max_drop is negative (an explicit demand that int8 beat fp32)."""
    if max_drop is None:
        return None
    step = resolution(val_size)
    return max(max_drop, RESOLVABLE_IMAGES * step) if step and max_drop >= 0 else max_drop


def exceeds_budget(fp32_top1: float, int8_top1: float, max_drop: float | None, val_size: int | None) -> bool:
    """Whether int8 loses more val top-1 than the budget allows (allowed_drop), up to a
    millionth of an image's worth of float rounding; never with max_drop None. NaN fails."""
    allowed = allowed_drop(max_drop, val_size)
    if allowed is None:
        return False
    slack = 1e-6 * (resolution(val_size) or 1.0)
    return not (fp32_top1 - int8_top1 <= allowed + slack)


def budget_summary(max_drop: float | None, val_size: int | None) -> dict:
    """What the stage records and logs about the budget's resolution: val_size,
    resolution_points (one image), allowed_drop, and a sentence saying so."""
    step, allowed = resolution(val_size), allowed_drop(max_drop, val_size)
    if max_drop is None:
        text = "no accuracy budget (quantize.max_drop: null)"
    elif step is None:
        text = f"accuracy budget {max_drop:g} top-1 points (val size unknown)"
    else:
        text = (f"accuracy budget: one val image of {val_size} is {step:.3g} top-1 points; a drop up to "
                f"{allowed:.3g} points (max(max_drop {max_drop:g}, {RESOLVABLE_IMAGES} images)) passes")
    return {"val_size": val_size, "resolution_points": step, "allowed_drop": allowed, "text": text}


@dataclass
class BudgetResult:
    max_drop: float | None
    fp32_top1: float
    int8_top1: float  # before the search (everything quantized)
    final_top1: float  # with `excluded` kept in float
    met: bool
    excluded: list = field(default_factory=list)  # node names kept in float by the search
    excluded_op_types: list = field(default_factory=list)  # ELEMENTWISE_OPS kept in float by the search
    sensitivity: list = field(default_factory=list)  # [{node, op_type, sqnr_in_db, sqnr_out_db, loss_db}], worst first
    steps: list = field(default_factory=list)  # [{keep_float, top1, drop}] one per re-quantization
    max_excluded: int = 0
    seconds: float = 0.0
    val_size: int | None = None  # images in the val split (None: not given); see allowed_drop
    allowed_drop: float | None = None  # max(max_drop, RESOLVABLE_IMAGES images' worth)

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.final_top1

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "drop": self.drop}


def _batches(images: np.ndarray, input_name: str, batch_size: int) -> list[dict]:
    images = np.ascontiguousarray(images, dtype=np.float32)
    return [{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)]


def _activations(model_path: Path, feeds: list[dict], work: Path) -> dict[str, np.ndarray]:
    """Every float tensor of the model on `feeds` (ORT's qdq_loss_debug; graph optimizations off)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    from edgekd.runtime.session import cpu_options
    from edgekd.train.compute import session_threads

    augmented = work / (model_path.stem + ".augmented.onnx")
    modify_model_output_intermediate_tensors(str(model_path), str(augmented))
    # graph optimizations off (every tensor keeps its name), the run's thread count (compute.threads)
    options = cpu_options(graph_optimization="disable", threads=session_threads())
    return collect_activations(str(augmented), feeds, session_options=options)


def node_sensitivity(prepared_fp32: str | Path, int8_path: str | Path, images: np.ndarray,
                     *, batch_size: int = 32) -> list[dict]:
    """Conv/Gemm/MatMul nodes of the int8 model ranked by the SQNR they lose, worst first.

    `prepared_fp32` must be the pre-processed fp32 model the int8 one was quantized from
    (same node and tensor names). Nodes already float in the int8 model are left out."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        compute_signal_to_quantization_noice_ratio as sqnr,
    )

    from edgekd.onnx_export import INPUT_NAME

    feeds = _batches(images, INPUT_NAME, batch_size)
    with tempfile.TemporaryDirectory(prefix="edgekd-sens-") as work:
        fp32_acts = _activations(Path(prepared_fp32), feeds, Path(work))
        int8_acts = _activations(Path(int8_path), feeds, Path(work))
    proto = onnx.load(str(int8_path))
    producers = {out: n for n in proto.graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    ranked = []
    for node in proto.graph.node:
        if node.op_type not in SENSITIVE_OPS:
            continue
        weight_source = producers.get(node.input[1])
        if weight_source is None or weight_source.op_type != "DequantizeLinear":
            continue  # kept in float
        # input: what the node reads (after Q/DQ) vs the fp32 tensor before the QuantizeLinear
        q_in = node.input[0]
        f_in = q_in
        padded_in = None
        if f_in in producers and producers[f_in].op_type == "DequantizeLinear":
            f_in = producers[f_in].input[0]
            if f_in in producers and producers[f_in].op_type == "QuantizeLinear":
                f_in = producers[f_in].input[0]
                if f_in in producers and producers[f_in].op_type == "Pad":
                    # input channels padded with zeros (edgekd.quant.pad): the reference is the
                    # int8 model's own padded float tensor (zeros add no signal and no noise)
                    padded_in = f_in
                    f_in = producers[f_in].input[0]
        # output: what the next node reads (after Q/DQ; a Relu the quantizer folded into the
        # QuantizeLinear's range is applied there) vs the fp32 tensor of that name
        q_out = node.output[0]
        quant = next((c for c in consumers.get(q_out, []) if c.op_type == "QuantizeLinear"), None)
        if quant is not None:
            dequant = next((c for c in consumers.get(quant.output[0], []) if c.op_type == "DequantizeLinear"), None)
            if dequant is not None:
                q_out = dequant.output[0]
        f_out = q_out[: -len(DQ_SUFFIX)] if q_out.endswith(DQ_SUFFIX) else q_out
        reference_in = int8_acts.get(padded_in) if padded_in else fp32_acts.get(f_in)
        if reference_in is None or q_in not in int8_acts or f_out not in fp32_acts or q_out not in int8_acts:
            continue
        sqnr_in = sqnr(reference_in, int8_acts[q_in])
        sqnr_out = sqnr(fp32_acts[f_out], int8_acts[q_out])
        loss = min(sqnr_in, SQNR_CAP_DB) - min(sqnr_out, SQNR_CAP_DB)
        ranked.append({"node": node.name, "op_type": node.op_type, "sqnr_in_db": round(sqnr_in, 2),
                       "sqnr_out_db": round(sqnr_out, 2), "loss_db": round(loss, 2)})
    ranked.sort(key=lambda r: r["loss_db"], reverse=True)
    return ranked


@dataclass(frozen=True)
class Measured:
    """Where a budget search starts: val top-1 of the fp32 model and of its all-int8
    quantization, on val_size images (None: the budget as given, see allowed_drop)."""

    fp32_top1: float
    int8_top1: float
    val_size: int | None = None


@dataclass(frozen=True)
class PtqInputs:
    """What ptq() quantizes the fp32 model with besides the paths and the QuantConfig: the
    calibration images, the metadata to write and the machine (detect_machine) it targets."""

    calib_images: np.ndarray
    metadata: dict | None = None
    machine: dict | None = None


def search(
    fp32_path: str | Path,
    int8_path: str | Path,
    *,
    cfg: QuantConfig,
    measured: Measured,
    evaluate: Callable[[Path], float],
    ptq_inputs: PtqInputs,
    log: Callable[[str], None] = logging.getLogger("edgekd").info,
) -> BudgetResult:
    """Keep the most sensitive nodes of `int8_path` (already quantized from `fp32_path` with
    `cfg` and `ptq_inputs`) in float until measured.fp32_top1 - evaluate(int8_path) fits the
    budget: cfg.max_drop, or with measured.val_size (the val split's image count)
    allowed_drop(cfg.max_drop, val_size).

    `int8_path` ends as the last model tried. The element-wise ops may be kept float as a
    group (`excluded_op_types`), then at most half of the Conv/Gemm/MatMul nodes (at least
    one) one by one (`excluded`); `met` says whether the budget was reached. `log` gets
    one line per step (the `edgekd` logger unless given)."""
    from edgekd.quant.ptq import prepare, ptq

    fp32_top1, int8_top1, val_size = measured.fp32_top1, measured.int8_top1, measured.val_size
    calib_images, metadata, machine = ptq_inputs.calib_images, ptq_inputs.metadata, ptq_inputs.machine
    start = time.perf_counter()
    result = BudgetResult(max_drop=cfg.max_drop, fp32_top1=fp32_top1, int8_top1=int8_top1, final_top1=int8_top1,
                          met=not exceeds_budget(fp32_top1, int8_top1, cfg.max_drop, val_size),
                          val_size=val_size, allowed_drop=allowed_drop(cfg.max_drop, val_size))
    if result.met:
        return result
    with tempfile.TemporaryDirectory(prefix="edgekd-budget-") as work:
        prepared = Path(work) / "prepared.onnx"
        prepare(fp32_path, prepared)
        images = calib_images[:SENSITIVITY_IMAGES]
        result.sensitivity = node_sensitivity(prepared, int8_path, images, batch_size=cfg.calib_batch_size)
        import onnx

        # the pre-processed graph's op types: what ptq matches exclude_op_types against
        prepared_ops = {n.op_type for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    nodes = onnx.load(str(fp32_path), load_external_data=False).graph.node
    result.max_excluded = max(1, sum(n.op_type in SENSITIVE_OPS for n in nodes) // 2)
    elementwise = sorted(prepared_ops & set(ELEMENTWISE_OPS) - set(cfg.exclude_op_types))
    if elementwise:
        grouped = dataclasses.replace(cfg, exclude_op_types=[*cfg.exclude_op_types, *elementwise])
        ptq(fp32_path, int8_path, calib_images=calib_images, cfg=grouped, metadata=metadata, progress=False,
            machine=machine)
        top1 = evaluate(Path(int8_path))
        result.steps.append({"keep_float": f"op types {', '.join(elementwise)}", "top1": top1,
                             "drop": fp32_top1 - top1})
        log(f"[quantize] budget: element-wise ops ({', '.join(elementwise)}) kept float -> val top-1 "
            f"{top1:.2f}% (drop {fp32_top1 - top1:.2f})")
        if top1 > int8_top1:  # they help: kept float from here on
            cfg, result.excluded_op_types, result.final_top1 = grouped, elementwise, top1
            if not exceeds_budget(fp32_top1, top1, cfg.max_drop, val_size):
                result.met = True
                result.seconds = round(time.perf_counter() - start, 3)
                return result
    for entry in result.sensitivity[: result.max_excluded]:
        result.excluded.append(entry["node"])
        ptq(fp32_path, int8_path, calib_images=calib_images, cfg=cfg, metadata=metadata, progress=False,
            machine=machine, extra_exclude=result.excluded)
        top1 = evaluate(Path(int8_path))
        result.final_top1 = top1
        result.steps.append({"keep_float": entry["node"], "top1": top1, "drop": fp32_top1 - top1})
        log(f"[quantize] budget: {entry['node']} ({entry['op_type']}, loses {entry['loss_db']:.1f} dB) "
            f"kept float -> val top-1 {top1:.2f}% (drop {fp32_top1 - top1:.2f})")
        if not exceeds_budget(fp32_top1, top1, cfg.max_drop, val_size):
            result.met = True
            break
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def quick_p50_ms(paths: list, image: np.ndarray, runs: int = 30) -> list[float]:
    """A rough median latency (ms, batch of one `image`) per model, runs interleaved so that
    a busy machine slows all of them alike (edgekd.runtime.measure.interleaved_medians: a
    cold run, then `runs` rounds of one run each). `edgekd bench` is the real measurement."""
    from edgekd.onnx_export import INPUT_NAME
    from edgekd.runtime.measure import interleaved_medians
    from edgekd.runtime.session import make_session

    feed = {INPUT_NAME: np.ascontiguousarray(image[None], dtype=np.float32)}
    return interleaved_medians([(make_session(p), feed) for p in paths], rounds=runs)
