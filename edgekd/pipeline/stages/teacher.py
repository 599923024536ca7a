"""TODO docstring (stages_train -> pipeline.stages.teacher)"""

from __future__ import annotations

from edgekd.pipeline.context import (
    Run,
    build_arch,
    fit_summary,
    load_stage_model,
    model_summary,
    run_tensors,
    teacher_of,
)
from edgekd.pipeline.layout import CHECKPOINTS, TEACHER_WEIGHTS


def stage_teacher(run: Run) -> dict:
    """Train the teacher, or load its weights (and fine-tune them when epochs > 0)."""
    from edgekd.io.artifacts import load_weights, save_weights
    from edgekd.train.loop import accuracy, cross_entropy_step, fit

    cfg = run.recipe.teacher
    t = run_tensors(run)
    teacher = build_arch(run, cfg.arch, cfg.arch_args)
    if cfg.weights is not None:
        load_weights(teacher, cfg.weights)
    result = {}
    if cfg.transfer is not None:  # pretrained backbone, new head: head-only phase, then fine-tuning
        from edgekd.train.transfer import transfer

        phases = transfer(teacher, cfg=cfg, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                          val_y=t["val_y"], seed=run.recipe.seed, progress=run.progress,
                          checkpoint_dir=run.path("state"), resume=run.resume, log=run.log)
        result.update(fit_summary(phases.pop("fit")))
        result.update(phases)
    elif cfg.epochs > 0:
        fit_result = fit(teacher, cross_entropy_step(teacher), train_x=t["train_x"], train_y=t["train_y"],
                         val_x=t["val_x"], val_y=t["val_y"], cfg=cfg, seed=run.recipe.seed,
                         desc="teacher", progress=run.progress, checkpoint=run.path(CHECKPOINTS["teacher"]),
                         resume=run.resume, log=run.log)
        result.update(fit_summary(fit_result))
    save_weights(teacher, run.path(TEACHER_WEIGHTS))
    run.teacher = teacher
    result.update(model_summary(run, teacher, cfg.arch))
    result["val_top1"] = accuracy(teacher, t["val_x"], t["val_y"])
    result["weights"] = TEACHER_WEIGHTS
    run.log(f"[teacher] {cfg.arch}: val top-1 {result['val_top1']:.2f}%")
    if run.recipe.distill.extra_teachers and learns_from_teacher_stage(run.recipe.distill):
        result["extra_teachers"] = _stage_extra_teachers(run)
    return result


def learns_from_teacher_stage(cfg) -> bool:
    """Offline KD and born-again's first generation use the teacher(s) of the teacher stage."""
    return cfg.scheme in ("offline", "born-again")


def _extra_teacher_file(i: int) -> str:
    return f"teacher.extra{i}.safetensors"


def _stage_extra_teachers(run: Run) -> list[dict]:
    """Multi-teacher KD: train or load each of distill.extra_teachers like the main teacher,
    with its own per-epoch checkpoint (state/teacher.extra<i>.ckpt, so --resume continues
    it) and weights file (teacher.extra<i>.safetensors)."""
    from edgekd.distill.config import extra_teacher_configs
    from edgekd.io.artifacts import load_weights, save_weights
    from edgekd.train.loop import accuracy, cross_entropy_step, fit

    t = run_tensors(run)
    summaries = []
    for i, cfg in enumerate(extra_teacher_configs(run.recipe.distill), start=1):
        model = build_arch(run, cfg.arch, cfg.arch_args)
        if cfg.weights is not None:
            load_weights(model, cfg.weights)
        summary = {}
        if cfg.epochs > 0:
            fit_result = fit(model, cross_entropy_step(model), train_x=t["train_x"], train_y=t["train_y"],
                             val_x=t["val_x"], val_y=t["val_y"], cfg=cfg, seed=run.recipe.seed + i,
                             desc=f"teacher.extra{i}", progress=run.progress,
                             checkpoint=run.path(f"state/teacher.extra{i}.ckpt"), resume=run.resume, log=run.log)
            summary.update(fit_summary(fit_result))
        save_weights(model, run.path(_extra_teacher_file(i)))
        summary.update(model_summary(run, model, cfg.arch))
        summary.update(val_top1=accuracy(model, t["val_x"], t["val_y"]), weights=_extra_teacher_file(i))
        run.log(f"[teacher] extra teacher {i} {cfg.arch}: val top-1 {summary['val_top1']:.2f}%")
        summaries.append(summary)
    return summaries


def teachers_of(run: Run) -> list:
    """The main teacher, then the extra teachers (multi-teacher KD) from their weights files."""
    from edgekd.distill.config import extra_teacher_configs

    extras = [load_stage_model(run, cfg.arch, cfg.arch_args, _extra_teacher_file(i))
              for i, cfg in enumerate(extra_teacher_configs(run.recipe.distill), start=1)]
    return [teacher_of(run), *extras]
