"""The distill stage: knowledge distillation into the student, by the scheme the recipe
names (edgekd.distill: offline from the frozen teacher(s), online mutual learning,
born-again or EMA self-distillation)."""

from __future__ import annotations

from edgekd.distill.config import DistillConfig
from edgekd.pipeline.context import Context, StageResult, build_arch, degenerate_flags, fit_summary, model_summary
from edgekd.pipeline.layout import CHECKPOINTS, STUDENT_WEIGHTS


def learns_from_teacher(cfg: DistillConfig) -> bool:
    """Offline KD and born-again's first generation learn from the teacher stage's teacher(s);
    online and ema train without them."""
    return cfg.scheme in ("offline", "born-again")


def check(cfg: DistillConfig, *, spec, teacher_arch: str, teacher_arch_args: dict) -> None:
    """Before the run starts: every layer that distill.terms names exists in the student and the
    (first) teacher. (The extra teachers and their weights are checked by pipeline/preflight.py.)"""
    from edgekd.distill.terms import check_layer

    if not learns_from_teacher(cfg) or not cfg.terms:
        return
    student = build_arch(spec, cfg.arch, cfg.arch_args)
    teacher = build_arch(spec, teacher_arch, teacher_arch_args)
    archs = {"student": cfg.arch, "teacher": teacher_arch}
    for i, term in enumerate(cfg.terms):
        for side, model in (("student", student), ("teacher", teacher)):
            for name in term[side] or [None]:  # None: the classifier's input (rkd's default)
                check_layer(model, name, what=f"distill.terms[{i}] ({term['kind']}) {side} {archs[side]}")


def run(ctx: Context, cfg: DistillConfig, inputs: dict) -> StageResult:
    """inputs: `splits`, `tensors`, and `teachers`: the teacher then the extra teachers (offline
    and born-again; [] for online and ema). Hinton KD plus the feature and relation terms of
    distill.terms; the model the scheme picks on val continues down the chain."""
    from edgekd.io.artifacts import save_weights
    from edgekd.train.loop import accuracy

    spec, t = inputs["splits"].spec, inputs["tensors"]
    if cfg.scheme == "offline":
        from edgekd.distill.offline import distill

        teachers = inputs["teachers"]
        student = build_arch(spec, cfg.arch, cfg.arch_args)
        fit_result = distill(student, teachers, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                             val_y=t["val_y"], cfg=cfg, seed=ctx.seed, progress=ctx.progress,
                             checkpoint=ctx.path(CHECKPOINTS["distill"]), resume=ctx.resume, log=ctx.log)
        details = {"teachers": len(teachers), "terms": [term["kind"] for term in cfg.terms]}
    else:
        student, fit_result, details = _scheme(ctx, cfg, spec, t, inputs["teachers"])
    save_weights(student, ctx.path(STUDENT_WEIGHTS))
    offline = cfg.scheme == "offline"
    record = {**fit_summary(fit_result), **model_summary(student, cfg.arch, spec), **({} if offline else details)}
    record["flags"] = degenerate_flags(ctx, "student", student, t["val_x"], t["val_y"], spec.num_classes)
    record.update(val_top1=accuracy(student, t["val_x"], t["val_y"]), weights=STUDENT_WEIGHTS,
                  temperature=cfg.temperature, alpha=cfg.alpha, **(details if offline else {}))
    name = f"{cfg.arch}:" if offline else f"{cfg.scheme}: {cfg.arch}"
    ctx.log(f"[distill] {name} val top-1 {record['val_top1']:.2f}%")
    return StageResult(record, {"student": student})


def _scheme(ctx: Context, cfg: DistillConfig, spec, t: dict, teachers: list):
    """online / born-again / ema (edgekd.distill.schemes): (student, fit result, details)."""
    import torch

    from edgekd.distill import schemes

    data = {key: t[key] for key in ("train_x", "train_y", "val_x", "val_y")}
    common = {"cfg": cfg, "seed": ctx.seed, "progress": ctx.progress, "resume": ctx.resume, "log": ctx.log}
    if cfg.scheme == "online":
        peers = [build_arch(spec, cfg.arch, cfg.arch_args) for _ in range(cfg.peers)]  # each its own initialization
        outcome = schemes.mutual_learning(peers, **data, **common, checkpoint=ctx.path(CHECKPOINTS["distill"]))
    elif cfg.scheme == "born-again":
        def fresh_student(generation: int):
            # seeded per generation and outside the global RNG: a resumed run rebuilds the same one
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed * 1000 + generation)
                return build_arch(spec, cfg.arch, cfg.arch_args)

        outcome = schemes.born_again(build_arch(spec, cfg.arch, cfg.arch_args), teachers, make_student=fresh_student,
                                     **data, **common, checkpoint_dir=ctx.path("state"))
    else:
        outcome = schemes.ema_self_distill(build_arch(spec, cfg.arch, cfg.arch_args), **data, **common,
                                           checkpoint=ctx.path(CHECKPOINTS["distill"]))
    return outcome.student, outcome.fit, outcome.details
