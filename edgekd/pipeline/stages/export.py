"""TODO docstring (pipeline -> pipeline.stages.export)"""

from __future__ import annotations

from edgekd.pipeline.context import (
    Run,
    input_shape_of,
    run_splits,
    run_tensors,
    student_of,
    student_summary,
    teacher_of,
)
from edgekd.pipeline.layout import STUDENT_ONNX, TEACHER_ONNX


def stage_export(run: Run) -> dict:
    """Teacher and student to fp32 ONNX, each checked against PyTorch."""
    from edgekd.onnx_export import model_metadata, to_onnx

    spec = run_splits(run).spec
    check_inputs = run_tensors(run)["val_x"]
    result = {}
    for stage, model, arch, file in (
        ("teacher", teacher_of(run), run.recipe.teacher.arch, TEACHER_ONNX),
        ("student", student_of(run), run.recipe.distill.arch, STUDENT_ONNX),
    ):
        summary = run.stages["teacher"] if stage == "teacher" else student_summary(run)
        metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=summary["params"], macs=summary["macs"])
        report = to_onnx(model, run.path(file), input_shape=input_shape_of(spec), metadata=metadata,
                         cfg=run.recipe.export, check_inputs=check_inputs)
        result[stage] = {"path": file, "max_abs_diff": {str(b): d for b, d in report.max_abs_diff.items()}}
        run.log(f"[export] {file}: max |onnx - torch| = {max(report.max_abs_diff.values()):.2e}")
    return result
