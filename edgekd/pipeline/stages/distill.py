"""The two training stages: the teacher (trained, loaded, or transferred from pretrained
weights; plus extra teachers for multi-teacher KD) and distillation into the student (offline,
online mutual learning, born-again or EMA self-distillation)."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import ModelFileError
from edgekd.pipeline.context import (
    Run,
    build_arch,
    fit_summary,
    model_summary,
    run_tensors,
)
from edgekd.pipeline.layout import CHECKPOINTS, STUDENT_WEIGHTS
from edgekd.pipeline.stages.teacher import learns_from_teacher_stage, teachers_of


def check_distill_knowledge(run: Run) -> None:
    """Extra teachers build and their weights exist; every layer that distill.terms names
    exists in the student and the (first) teacher. For the schemes that learn from the
    teacher stage (offline, and born-again's first generation) only."""
    from edgekd.distill.config import extra_teacher_configs
    from edgekd.distill.terms import check_layer

    cfg = run.recipe.distill
    if not learns_from_teacher_stage(cfg):
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


def stage_distill(run: Run) -> dict:
    """Knowledge distillation from the frozen teacher(s) into the student: Hinton KD plus
    the feature and relation terms of distill.terms (edgekd.distill)."""
    from edgekd.distill.offline import distill
    from edgekd.io.artifacts import save_weights
    from edgekd.train.loop import accuracy

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

    from edgekd.distill import schemes
    from edgekd.io.artifacts import save_weights
    from edgekd.train.loop import accuracy

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
