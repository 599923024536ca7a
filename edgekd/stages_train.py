"""The two training stages: the teacher (trained, loaded, or transferred from pretrained
weights; plus extra teachers for multi-teacher KD) and distillation into the student (offline,
online mutual learning, born-again or EMA self-distillation)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelFileError

from .run import (TEACHER_WEIGHTS, STUDENT_WEIGHTS, CHECKPOINTS, Run, run_tensors, build_arch,
                  load_stage_model, teacher_of, model_summary, fit_summary)


def check_distill_knowledge(run: Run) -> None:
    """Extra teachers build and their weights exist; every layer that distill.terms names
    exists in the student and the (first) teacher. For the schemes that learn from the
    teacher stage (offline, and born-again's first generation) only."""
    from .kd_losses import check_layer
    from .recipe import extra_teacher_configs

    cfg = run.recipe.distill
    if not _learns_from_teacher_stage(cfg):
        return
    for i, extra in enumerate(extra_teacher_configs(cfg), start=1):
        build_arch(run, extra.arch, extra.arch_args)
        if extra.weights is not None and not Path(extra.weights).is_file():
            raise ModelFileError(f"distill.extra_teachers[{i - 1}].weights '{extra.weights}' does not exist")
    if not cfg.terms:
        return
    student = build_arch(run, cfg.arch, cfg.arch_args)
    teacher = build_arch(run, run.recipe.teacher.arch, run.recipe.teacher.arch_args)
    archs = {"student": cfg.arch, "teacher": run.recipe.teacher.arch}
    for i, term in enumerate(cfg.terms):
        for side, model in (("student", student), ("teacher", teacher)):
            for name in term[side] or [None]:  # None: the classifier's input (rkd's default)
                check_layer(model, name, what=f"distill.terms[{i}] ({term['kind']}) {side} {archs[side]}")


def stage_teacher(run: Run) -> dict:
    """Train the teacher, or load its weights (and fine-tune them when epochs > 0)."""
    from .artifacts import load_weights, save_weights
    from .train import accuracy, cross_entropy_step, fit

    cfg = run.recipe.teacher
    t = run_tensors(run)
    teacher = build_arch(run, cfg.arch, cfg.arch_args)
    if cfg.weights is not None:
        load_weights(teacher, cfg.weights)
    result = {}
    if cfg.transfer is not None:  # pretrained backbone, new head: head-only phase, then fine-tuning
        from .transfer import transfer

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
    if run.recipe.distill.extra_teachers and _learns_from_teacher_stage(run.recipe.distill):
        result["extra_teachers"] = _stage_extra_teachers(run)
    return result


def _learns_from_teacher_stage(cfg) -> bool:
    """Offline KD and born-again's first generation use the teacher(s) of the teacher stage."""
    return cfg.scheme in ("offline", "born-again")


def _extra_teacher_file(i: int) -> str:
    return f"teacher.extra{i}.safetensors"


def _stage_extra_teachers(run: Run) -> list[dict]:
    """Multi-teacher KD: train or load each of distill.extra_teachers like the main teacher,
    with its own per-epoch checkpoint (state/teacher.extra<i>.ckpt, so --resume continues
    it) and weights file (teacher.extra<i>.safetensors)."""
    from .artifacts import load_weights, save_weights
    from .recipe import extra_teacher_configs
    from .train import accuracy, cross_entropy_step, fit

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
    from .recipe import extra_teacher_configs

    extras = [load_stage_model(run, cfg.arch, cfg.arch_args, _extra_teacher_file(i))
              for i, cfg in enumerate(extra_teacher_configs(run.recipe.distill), start=1)]
    return [teacher_of(run), *extras]


def stage_distill(run: Run) -> dict:
    """Knowledge distillation from the frozen teacher(s) into the student: Hinton KD plus
    the feature and relation terms of distill.terms (edgekd.distill)."""
    from .artifacts import save_weights
    from .distill import distill
    from .train import accuracy

    cfg = run.recipe.distill
    if cfg.scheme != "offline":  # online, born-again, ema: edgekd.schemes; offline continues below
        return _distill_scheme(run)
    t = run_tensors(run)
    teachers = teachers_of(run)  # the teacher, plus distill.extra_teachers (multi-teacher KD)
    student = build_arch(run, cfg.arch, cfg.arch_args)
    fit_result = distill(student, teachers, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                         val_y=t["val_y"], cfg=cfg, seed=run.recipe.seed, progress=run.progress,
                         checkpoint=run.path(CHECKPOINTS["distill"]), resume=run.resume, log=run.log)
    save_weights(student, run.path(STUDENT_WEIGHTS))
    run.student = student
    result = {**fit_summary(fit_result), **model_summary(run, student, cfg.arch)}
    result.update(val_top1=accuracy(student, t["val_x"], t["val_y"]), weights=STUDENT_WEIGHTS,
                  temperature=cfg.temperature, alpha=cfg.alpha, teachers=len(teachers),
                  terms=[term["kind"] for term in cfg.terms])
    run.log(f"[distill] {cfg.arch}: val top-1 {result['val_top1']:.2f}%")
    return result


def _distill_scheme(run: Run) -> dict:
    """distill.scheme online / born-again / ema (edgekd.schemes). The teacher stage still
    runs for every scheme (its row in the report is the reference); online and ema do not
    use it. The model the scheme picks on val (best peer, best generation, student or EMA)
    is the student that continues down the chain."""
    import torch

    from . import schemes
    from .artifacts import save_weights
    from .train import accuracy

    cfg = run.recipe.distill
    t = run_tensors(run)
    data = {key: t[key] for key in ("train_x", "train_y", "val_x", "val_y")}
    common = {"cfg": cfg, "seed": run.recipe.seed, "progress": run.progress, "resume": run.resume, "log": run.log}
    if cfg.scheme == "online":
        peers = [build_arch(run, cfg.arch, cfg.arch_args) for _ in range(cfg.peers)]  # each its own initialization
        outcome = schemes.mutual_learning(peers, **data, **common, checkpoint=run.path(CHECKPOINTS["distill"]))
    elif cfg.scheme == "born-again":
        def fresh_student(generation: int):
            # seeded per generation and outside the global RNG: a resumed run rebuilds the same one
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run.recipe.seed * 1000 + generation)
                return build_arch(run, cfg.arch, cfg.arch_args)

        outcome = schemes.born_again(build_arch(run, cfg.arch, cfg.arch_args), teachers_of(run), make_student=fresh_student,
                                     **data, **common, checkpoint_dir=run.path("state"))
    else:
        outcome = schemes.ema_self_distill(build_arch(run, cfg.arch, cfg.arch_args), **data, **common,
                                           checkpoint=run.path(CHECKPOINTS["distill"]))
    student = outcome.student
    save_weights(student, run.path(STUDENT_WEIGHTS))
    run.student = student
    result = {**fit_summary(outcome.fit), **model_summary(run, student, cfg.arch), **outcome.details}
    result.update(val_top1=accuracy(student, t["val_x"], t["val_y"]), weights=STUDENT_WEIGHTS,
                  temperature=cfg.temperature, alpha=cfg.alpha)
    run.log(f"[distill] {cfg.scheme}: {cfg.arch} val top-1 {result['val_top1']:.2f}%")
    return result
