"""The export stage: teacher and student to fp32 ONNX, each checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

from edgekd.onnx_export import ExportConfig
from edgekd.pipeline.context import Context, StageResult, input_shape_of
from edgekd.pipeline.layout import STUDENT_ONNX, TEACHER_ONNX
from edgekd.pipeline.stage_inputs import ExportInputs


def run(ctx: Context, cfg: ExportConfig, inputs: ExportInputs) -> StageResult:
    """inputs: edgekd.pipeline.stage_inputs.ExportInputs (`models`: {stage: (model, arch,
    record with params and macs)} for 'teacher' and 'student')."""
    import torch

    from edgekd.onnx_export import model_metadata, to_onnx
    from edgekd.train.tensors import to_tensor

    splits = inputs.splits
    spec = splits.spec
    check_inputs = inputs.data.val_x
    if not isinstance(check_inputs, torch.Tensor):  # streamed: the first images of the bounded in-memory val set
        check_inputs = to_tensor(splits.val_x[: max(cfg.check_batch_sizes, default=0)], spec.mean, spec.std)
    record = {}
    for stage, file in (("teacher", TEACHER_ONNX), ("student", STUDENT_ONNX)):
        model, arch, summary = inputs.models[stage]
        if getattr(model, "onnx_path", None) is not None:  # teacher.onnx: it is ONNX already
            record[stage] = copy_onnx_teacher(model.onnx_path, ctx.path(file), spec)
            ctx.log(f"[export] {file}: the ONNX teacher, copied with edgekd metadata")
            continue
        check_finite_weights(model, stage, arch)
        metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=summary["params"], macs=summary["macs"])
        report = to_onnx(model, ctx.path(file), input_shape=input_shape_of(spec), metadata=metadata, cfg=cfg,
                         check_inputs=check_inputs)
        record[stage] = {"path": file, "max_abs_diff": {str(b): d for b, d in report.max_abs_diff.items()},
                         "max_rel_diff": {str(b): d for b, d in report.max_rel_diff.items()},
                         "atol": report.atol, "rtol": report.rtol}
        ctx.log(f"[export] {file}: max |onnx - torch| = {max(report.max_abs_diff.values()):.2e}")
    return StageResult(record)


def check_finite_weights(model, stage: str, arch: str) -> None:
    """NaN or inf weights are the model's fault, not the exporter's: refuse them by name
    before exporting (the parity check would otherwise report a NaN difference)."""
    import torch

    from edgekd.errors import ModelFileError

    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise ModelFileError(f"the {stage} ({arch}) weights are non-finite (NaN or inf in '{bad[0]}'{more}), so it "
                             "cannot be exported; its weights file is damaged or its training diverged: start a new "
                             "run (with a lower lr if it diverged)")


def copy_onnx_teacher(source: str, target, spec) -> dict:
    """teacher.onnx into the run as teacher.fp32.onnx, with edgekd's metadata added where the
    file has none (the data's normalization: what the distillation fed it), so that bench
    evaluates it as the chain did."""
    import onnx

    from edgekd.io.artifacts import atomic_path
    from edgekd.onnx_export import model_metadata
    from edgekd.runtime.metadata import MACS, STAGE, props, set_metadata
    from edgekd.runtime.session import count_params

    proto = onnx.load(str(source))
    own = props(proto)
    ours = model_metadata(stage="teacher", arch=f"onnx:{Path(source).name}", spec=spec,
                          params=count_params(source) or 0, macs=0)
    del ours[MACS]  # not known for a foreign graph
    set_metadata(proto, {**ours, **own, STAGE: "teacher"})
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
    return {"path": str(target.name), "copied_from": str(source), "max_abs_diff": {}}
