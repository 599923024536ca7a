"""The distill stage: knowledge distillation into the student, by the scheme the recipe
names (edgekd.distill: offline from the frozen teacher(s), online mutual learning,
born-again or EMA self-distillation)."""

from __future__ import annotations

from edgekd.distill.config import DistillConfig
from edgekd.pipeline.context import Context, StageResult, build_arch, degenerate_flags, fit_summary, model_summary
from edgekd.pipeline.layout import BASELINE_CHECKPOINT, CHECKPOINTS, STUDENT_ALONE_WEIGHTS, STUDENT_WEIGHTS


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
    import torch

    from edgekd.data.unlabeled import image_counts
    from edgekd.io.artifacts import save_weights
    from edgekd.train.loop import accuracy

    spec, t = inputs["splits"].spec, inputs["tensors"]
    initial_rng = torch.get_rng_state()  # the baseline starts from the student's own initial weights
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
    record.update(images=image_counts(t["train_y"]), teacher_outputs=teacher_outputs_seen(cfg))
    name = f"{cfg.arch}:" if offline else f"{cfg.scheme}: {cfg.arch}"
    ctx.log(f"[distill] {name} val top-1 {record['val_top1']:.2f}%")
    if cfg.baseline:
        record.update(_baseline(ctx, cfg, inputs, student, record["val_top1"], initial_rng))
    else:  # an earlier --force run's
        ctx.path(STUDENT_ALONE_WEIGHTS).unlink(missing_ok=True)
    return StageResult(record, {"student": student})


def teacher_outputs_seen(cfg: DistillConfig) -> str | None:
    """What the teacher's outputs were computed on, for the record (None: no teacher)."""
    if not learns_from_teacher(cfg):
        return None
    if cfg.caches_teacher():
        return "cached (plain images)"
    return "per batch (mixed images)" if cfg.mixup > 0 else "per batch"


def _baseline(ctx: Context, cfg: DistillConfig, inputs: dict, student, val_top1: float, initial_rng) -> dict:
    """distill.baseline: the student trained alone (edgekd.distill.baseline) from the same
    initial weights, saved, and compared with the distilled student on val and test (PyTorch,
    fp32, before pruning and int8): `gain_points` on test, `val_gain_points` on val."""
    import numpy as np
    import torch

    from edgekd.data.unlabeled import image_counts
    from edgekd.distill.baseline import optimizer_steps, train_alone
    from edgekd.io.artifacts import save_weights
    from edgekd.train.loop import accuracy, to_tensor

    splits, t = inputs["splits"], inputs["tensors"]
    spec = splits.spec
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(initial_rng)
        alone = build_arch(spec, cfg.arch, cfg.arch_args)
    ctx.log("[distill] baseline: the same student alone (cross-entropy only, same schedule and steps)")
    fit_result = train_alone(alone, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"], val_y=t["val_y"],
                             cfg=cfg, seed=ctx.seed, progress=ctx.progress, checkpoint=ctx.path(BASELINE_CHECKPOINT),
                             resume=ctx.resume, log=ctx.log)
    save_weights(alone, ctx.path(STUDENT_ALONE_WEIGHTS))
    test_x, test_y = to_tensor(splits.test_x, spec.mean, spec.std), torch.from_numpy(splits.test_y.astype(np.int64))
    test_top1, alone_test = accuracy(student, test_x, test_y), accuracy(alone, test_x, test_y)
    alone_val = accuracy(alone, t["val_x"], t["val_y"])
    steps = optimizer_steps(len(t["train_y"]), cfg.batch_size, cfg.epochs)
    summary = {key: value for key, value in fit_summary(fit_result).items() if key != "epochs"}
    baseline = {**model_summary(alone, cfg.arch, spec), **summary, "val_top1": alone_val, "test_top1": alone_test,
                # the labeled images only, repeated in turn to as many per epoch as the distilled student's
                "images": {"labeled": image_counts(t["train_y"])["labeled"], "unlabeled": 0},
                "images_per_epoch": len(t["train_y"]), "steps": steps, "weights": STUDENT_ALONE_WEIGHTS}
    gain = round(test_top1 - alone_test, 3)
    ctx.log(f"[distill] student alone: test top-1 {alone_test:.2f}%, distilled {test_top1:.2f}%: distillation "
            f"{gain:+.2f} points (val {val_top1 - alone_val:+.2f})")
    return {"test_top1": test_top1, "steps": steps, "baseline": baseline, "gain_points": gain, "gain_split": "test",
            "val_gain_points": round(val_top1 - alone_val, 3)}


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
