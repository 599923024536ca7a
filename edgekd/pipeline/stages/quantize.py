"""The quantize stage: int8 by post-training quantization within the accuracy budget, or by
quantization-aware training (edgekd.quant)."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.io.artifacts import atomic_write_text
from edgekd.pipeline.context import Context, StageResult, fit_summary, input_shape_of
from edgekd.pipeline.layout import INT8_ONNX, QUANT_BUDGET_JSON, STUDENT_ONNX
from edgekd.pipeline.stage_inputs import QuantizeInputs
from edgekd.quant.budget import Measured, PtqInputs, budget_summary, exceeds_budget
from edgekd.quant.config import QuantConfig

# what the stage's record keeps of resolve_quant_settings' answer
RECORDED_SETTINGS = ("target_from", "activation_type", "weight_type", "reduce_range", "per_channel",
                     "pad_input_channels_to", "overrides")


def run(ctx: Context, cfg: QuantConfig, inputs: QuantizeInputs) -> StageResult:
    """Post-training static int8 (QDQ) of the student with ONNX Runtime, within the accuracy
    budget (quantize.max_drop): if int8 loses more val top-1 than that, its most sensitive
    nodes are kept in float (edgekd.quant_budget); if that is not enough the run fails with
    exit code 3, after writing state/quantize-budget.json.

    inputs: edgekd.pipeline.stage_inputs.QuantizeInputs (for QAT: data, teacher, student, the
    distill section whose temperature and alpha QAT fine-tunes with, and export.opset)."""
    import onnx

    from edgekd.quant.presets import format_name
    from edgekd.quant.ptq import ptq
    from edgekd.runtime.inputs import evaluate, preprocess
    from edgekd.runtime.machine import detect_machine
    from edgekd.runtime.metadata import STAGE, props
    from edgekd.runtime.session import make_session

    if not cfg.enabled:
        ctx.path(INT8_ONNX).unlink(missing_ok=True)  # a stale int8 model from --force must not be benched
        return StageResult({"enabled": False})
    splits = inputs.splits
    fp32 = ctx.path(STUDENT_ONNX)
    meta = props(onnx.load(str(fp32), load_external_data=False))
    meta[STAGE] = "int8"
    calib = preprocess(splits.calib_x, meta)
    machine = detect_machine()
    if cfg.method == "qat":
        return StageResult(_quantize_qat(ctx, cfg, inputs, meta=meta, machine=machine))
    report = ptq(fp32, ctx.path(INT8_ONNX), calib_images=calib, cfg=cfg, metadata=meta, progress=ctx.progress,
                 machine=machine)
    settings = report.settings
    ctx.log(f"[quantize] target {settings['target']} (from {settings['target_from']}): {format_name(settings)}, "
            f"reduce_range {settings['reduce_range']}, per_channel {settings['per_channel']}"
            + "".join(f"; input '{p['input']}' padded from {p['channels']} to {p['padded_to']} channels for the int8 "
                      "conv kernel" for p in report.padded_inputs)
            + (f"; set in the recipe: {', '.join(settings['overrides'])}" if settings["overrides"] else ""))
    # val accuracy of the deployed int8 model, as ONNX Runtime runs it (not a simulation)
    val_x = preprocess(splits.val_x, meta)

    def val_top1(path) -> float:  # with the run's thread count (compute.threads), as the budget search
        from edgekd.runtime.config import BenchConfig
        from edgekd.train.compute import session_threads

        return evaluate(make_session(path, BenchConfig(threads=session_threads())), val_x, splits.val_y)

    int8_val = val_top1(ctx.path(INT8_ONNX))
    fp32_val = val_top1(fp32)
    ctx.log(f"[quantize] {INT8_ONNX}: val top-1 {int8_val:.2f}% (fp32 ONNX {fp32_val:.2f}%)")
    result = {
        "method": "ptq",
        "path": INT8_ONNX,
        "target": settings["target"],
        "settings": {k: settings[k] for k in RECORDED_SETTINGS},
        "calibration": report.calibration,
        "calib_samples": report.samples,
        "calib_batch_size": cfg.calib_batch_size,
        "format": format_name(settings),
        "per_channel": report.per_channel,
        "float_nodes": list(report.excluded_nodes),
        "padded_inputs": list(report.padded_inputs),
        "val_top1_int8": int8_val,
        "val_top1_fp32": fp32_val,
        "max_drop": cfg.max_drop,
    }
    val_size = len(splits.val_y)
    result["budget_resolution"] = budget_summary(cfg.max_drop, val_size)
    ctx.log(f"[quantize] {result['budget_resolution']['text']}")
    if exceeds_budget(fp32_val, int8_val, cfg.max_drop, val_size):
        result.update(_quantize_budget(ctx, cfg, measured=Measured(fp32_val, int8_val, val_size),
                                       ptq_inputs=PtqInputs(calib, meta, machine), evaluate=val_top1, partial=result))
    return StageResult(result)


def _quantize_qat(ctx: Context, cfg: QuantConfig, inputs: QuantizeInputs, *, meta, machine) -> dict:
    """Quantization-aware KD fine-tuning of the student (edgekd.qat), exported as QDQ ONNX.
    The accuracy budget is checked on the deployed model (ONNX Runtime, val split); there is
    no float-node search for QAT: beyond quantize.max_drop the run fails with exit code 3."""
    from edgekd.errors import AccuracyBudgetExceeded
    from edgekd.quant.presets import format_name, resolve_quant_settings
    from edgekd.quant.qat.export import export_qdq
    from edgekd.quant.qat.prepare import prepare_qat
    from edgekd.quant.qat.train import qat
    from edgekd.runtime.inputs import evaluate, preprocess
    from edgekd.runtime.session import make_session
    from edgekd.train.tensors import to_tensor

    settings = resolve_quant_settings(cfg, machine)
    splits, kd = inputs.splits, inputs.kd
    spec = splits.spec
    qmodel = prepare_qat(inputs.student, activation_type=settings["activation_type"],
                         reduce_range=settings["reduce_range"])
    result = qat(qmodel, inputs.teacher, inputs.data, cfg.qat, ctx.run_options("qat"), temperature=kd.temperature,
                 alpha=kd.alpha, calib_images=to_tensor(splits.calib_x, spec.mean, spec.std))
    padded = export_qdq(qmodel, ctx.path(INT8_ONNX), input_shape=input_shape_of(spec), metadata=meta,
                        opset=inputs.opset, pad_input_channels_to=settings["pad_input_channels_to"])
    val_x = preprocess(splits.val_x, meta)
    int8_val = evaluate(make_session(ctx.path(INT8_ONNX)), val_x, splits.val_y)
    fp32_val = evaluate(make_session(ctx.path(STUDENT_ONNX)), val_x, splits.val_y)
    name = format_name(settings) + " (QAT)"
    ctx.log(f"[quantize] QAT {result.total_steps} steps ({result.observe_steps} observing ranges), target "
            f"{settings['target']}: {name}; {INT8_ONNX}: val top-1 {int8_val:.2f}% (fake-quant PyTorch "
            f"{result.val_top1:.2f}%, fp32 ONNX {fp32_val:.2f}%)")
    record = {
        "method": "qat", "path": INT8_ONNX, "target": settings["target"], "format": name,
        "settings": {k: settings[k] for k in RECORDED_SETTINGS},
        "qat": {**fit_summary(result.fit), "steps": result.total_steps, "observe_steps": result.observe_steps,
                "activation_quantizers": result.activation_quantizers, "seconds": round(result.seconds, 3)},
        "val_top1_int8": int8_val, "val_top1_fake_quant": result.val_top1, "val_top1_fp32": fp32_val,
        "max_drop": cfg.max_drop, "float_nodes": [], "padded_inputs": padded,
    }
    if exceeds_budget(fp32_val, int8_val, cfg.max_drop, len(splits.val_y)):
        atomic_write_text(ctx.path(QUANT_BUDGET_JSON), json.dumps(record, indent=2))
        ctx.path(INT8_ONNX).unlink(missing_ok=True)
        raise AccuracyBudgetExceeded(
            f"QAT int8 loses {fp32_val - int8_val:.2f} points of val top-1 (fp32 {fp32_val:.2f}%, int8 "
            f"{int8_val:.2f}%); quantize.max_drop is {cfg.max_drop}. See {ctx.path('state/quantize-budget.json')}; "
            f"train longer (quantize.qat.epochs), raise the budget, or use quantize.method: ptq. {STUDENT_ONNX} is kept")
    return record


def _quantize_budget(ctx: Context, cfg: QuantConfig, *, measured: Measured, ptq_inputs: PtqInputs, evaluate,
                     partial: dict) -> dict:
    """The budget search from the `measured` accuracies; its result goes to
    state/quantize-budget.json whether it succeeds or not."""
    from edgekd.errors import AccuracyBudgetExceeded
    from edgekd.quant.budget import search

    fp32_val, int8_val = measured.fp32_top1, measured.int8_top1

    ctx.log(f"[quantize] int8 loses {fp32_val - int8_val:.2f} points of val top-1, more than quantize.max_drop "
            f"{cfg.max_drop}: keeping the most sensitive nodes in float")
    import shutil
    import tempfile

    from edgekd.quant.budget import quick_p50_ms

    with tempfile.TemporaryDirectory(prefix="edgekd-budget-") as work:
        all_int8 = Path(work) / "all-int8.onnx"  # to price the float nodes in latency afterwards
        shutil.copyfile(ctx.path(INT8_ONNX), all_int8)
        budget = search(ctx.path(STUDENT_ONNX), ctx.path(INT8_ONNX), cfg=cfg, measured=measured, evaluate=evaluate,
                        ptq_inputs=ptq_inputs, log=ctx.log)
        latency = None
        if budget.met:
            p50 = quick_p50_ms([ctx.path(STUDENT_ONNX), all_int8, ctx.path(INT8_ONNX)], ptq_inputs.calib_images[0])
            latency = dict(zip(("fp32", "int8_all_quantized", "int8_with_float_nodes"), p50))
            ctx.log(f"[quantize] rough p50 (batch 1): fp32 {p50[0]:.3f} ms, all int8 {p50[1]:.3f} ms, "
                    f"with the float nodes {p50[2]:.3f} ms")
    summary = {"met": budget.met, "kept_float": budget.excluded, "kept_float_op_types": budget.excluded_op_types,
               "val_top1_int8": budget.final_top1,
               "drop": budget.drop, "steps": budget.steps, "sensitivity": budget.sensitivity,
               "max_excluded": budget.max_excluded, "seconds": budget.seconds,
               "val_top1_int8_all_quantized": int8_val, "rough_p50_ms": latency}
    record = {**partial, "budget": summary}
    if budget.met:
        record.update(val_top1_int8=budget.final_top1, float_nodes=list(partial["float_nodes"]) + budget.excluded,
                      float_op_types=budget.excluded_op_types)
    atomic_write_text(ctx.path(QUANT_BUDGET_JSON), json.dumps(record, indent=2))
    if not budget.met:
        ctx.path(INT8_ONNX).unlink(missing_ok=True)  # it failed the gate: nothing to bench or deploy
        raise AccuracyBudgetExceeded(
            f"int8 loses {budget.drop:.2f} points of val top-1 (fp32 {fp32_val:.2f}%, int8 {budget.final_top1:.2f}%) "
            f"even with {_kept_float(budget)} kept in float; "
            f"quantize.max_drop is {cfg.max_drop}. See {ctx.path('state/quantize-budget.json')}; raise the budget, "
            f"set quantize.max_drop: null, or quantize.enabled: false. {STUDENT_ONNX} is kept")
    ctx.log(f"[quantize] within budget with {_kept_float(budget)} in float: val top-1 {budget.final_top1:.2f}% "
            f"(drop {budget.drop:.2f})")
    return {"val_top1_int8": budget.final_top1, "float_nodes": record["float_nodes"],
            "float_op_types": budget.excluded_op_types, "budget": summary}


def _kept_float(budget, shown: int = 3) -> str:
    """'2 node(s) (/a/Conv, /b/Conv) and the op types Mul, Sigmoid': a few names, the full list
    is in state/quantize-budget.json (an error message stays one readable line)."""
    names = ", ".join(budget.excluded[:shown]) + (", ..." if len(budget.excluded) > shown else "")
    parts = [f"{len(budget.excluded)} node(s) ({names})" if budget.excluded else "",
             f"the op types {', '.join(budget.excluded_op_types)}" if budget.excluded_op_types else ""]
    return " and ".join(filter(None, parts)) or "no node"
