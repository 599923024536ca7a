"""The distill stage: knowledge distillation into the student, by the scheme the recipe
names, looked up in SCHEMES (edgekd.distill.scheme_registry: offline from the frozen
teacher(s), online mutual learning, born-again or EMA self-distillation, or a registered one)."""

from __future__ import annotations

from edgekd.distill.config import DistillConfig
from edgekd.distill.scheme_registry import SCHEMES, SchemeRun
from edgekd.pipeline.context import Context, StageResult, build_arch, degenerate_flags, fit_summary, model_summary
from edgekd.pipeline.layout import BASELINE_CHECKPOINT, CHECKPOINTS, STUDENT_ALONE_WEIGHTS, STUDENT_WEIGHTS
from edgekd.pipeline.stage_inputs import DistillInputs
from edgekd.search.config import AUTO
from edgekd.search.stage import choose_student


def learns_from_teacher(cfg: DistillConfig) -> bool:
    """Whether the scheme reads the teacher stage's teacher(s) (offline KD and born-again's first
    generation do; online and ema train without them): its `learns_from_teacher` in SCHEMES."""
    return SCHEMES.get(cfg.scheme).learns_from_teacher


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


def run(ctx: Context, cfg: DistillConfig, inputs: DistillInputs) -> StageResult:
    """inputs: edgekd.pipeline.stage_inputs.DistillInputs. Hinton KD plus the feature and relation terms of
    distill.terms; the model the scheme picks on val continues down the chain."""
    import torch

    from edgekd.data.unlabeled import image_counts
    from edgekd.io.artifacts import save_weights
    from edgekd.train.evaluate import accuracy

    spec, t = inputs.splits.spec, inputs.data
    search = None
    if cfg.arch == AUTO:  # the student is chosen by its int8 latency on the target, then distilled in full
        cfg, search = choose_student(ctx, cfg, inputs)
    initial_rng = torch.get_rng_state()  # the baseline starts from the student's own initial weights
    outcome = SCHEMES.get(cfg.scheme)().train(_scheme_run(ctx, cfg, spec, t, inputs.teachers))
    student = outcome.student
    save_weights(student, ctx.path(STUDENT_WEIGHTS))
    record = {**fit_summary(outcome.fit), **model_summary(student, cfg.arch, spec)}
    record["flags"] = degenerate_flags(ctx, "student", student, t.val_x, t.val_y, spec.num_classes)
    record.update(val_top1=accuracy(student, t.val), weights=STUDENT_WEIGHTS,
                  temperature=cfg.temperature, alpha=cfg.alpha)
    # what the scheme measured on the way; it never replaces the stage's own keys
    record.update({key: value for key, value in outcome.details.items() if key not in record})
    record.update(images=image_counts(t.train_y), teacher_outputs=teacher_outputs_seen(cfg))
    if search is not None:
        record.update(arch_args=cfg.arch_args, search=search)
    # the default scheme goes unnamed in the log
    name = f"{cfg.arch}:" if cfg.scheme == DistillConfig.scheme else f"{cfg.scheme}: {cfg.arch}"
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


def _baseline(ctx: Context, cfg: DistillConfig, inputs: DistillInputs, student, val_top1: float, initial_rng) -> dict:
    """distill.baseline: the student trained alone (edgekd.distill.baseline) from the same
    initial weights, saved, and compared with the distilled student on val and test (PyTorch,
    fp32, before pruning and int8): `gain_points` on test, `val_gain_points` on val."""
    import numpy as np
    import torch

    from edgekd.data.unlabeled import image_counts
    from edgekd.distill.baseline import optimizer_steps, train_alone
    from edgekd.io.artifacts import save_weights
    from edgekd.train.evaluate import accuracy
    from edgekd.train.tensors import to_tensor

    splits, t = inputs.splits, inputs.data
    spec = splits.spec
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(initial_rng)
        alone = build_arch(spec, cfg.arch, cfg.arch_args)
    ctx.log("[distill] baseline: the same student alone (cross-entropy only, same schedule and steps)")
    fit_result = train_alone(alone, t, cfg, ctx.run_options("distill", ctx.path(BASELINE_CHECKPOINT),
                                                         name="distill.baseline"))
    save_weights(alone, ctx.path(STUDENT_ALONE_WEIGHTS))
    test_x, test_y = to_tensor(splits.test_x, spec.mean, spec.std), torch.from_numpy(splits.test_y.astype(np.int64))
    test_top1, alone_test = accuracy(student, test_x, test_y), accuracy(alone, test_x, test_y)
    alone_val = accuracy(alone, t.val)
    steps = optimizer_steps(len(t.train_y), cfg.batch_size, cfg.epochs)
    summary = {key: value for key, value in fit_summary(fit_result).items() if key != "epochs"}
    baseline = {**model_summary(alone, cfg.arch, spec), **summary, "val_top1": alone_val, "test_top1": alone_test,
                # the labeled images only, repeated in turn to as many per epoch as the distilled student's
                "images": {"labeled": image_counts(t.train_y)["labeled"], "unlabeled": 0},
                "images_per_epoch": len(t.train_y), "steps": steps, "weights": STUDENT_ALONE_WEIGHTS}
    gain = round(test_top1 - alone_test, 3)
    ctx.log(f"[distill] student alone: test top-1 {alone_test:.2f}%, distilled {test_top1:.2f}%: distillation "
            f"{gain:+.2f} points (val {val_top1 - alone_val:+.2f})")
    return {"test_top1": test_top1, "steps": steps, "baseline": baseline, "gain_points": gain, "gain_split": "test",
            "val_gain_points": round(val_top1 - alone_val, 3)}


def _scheme_run(ctx: Context, cfg: DistillConfig, spec, data, teachers: list) -> SchemeRun:
    """What the scheme (SCHEMES, edgekd.distill.scheme_registry) trains with."""
    import torch

    def new_student(seed: int | None = None):
        if seed is None:  # drawn from the global RNG, as the run's seed left it
            return build_arch(spec, cfg.arch, cfg.arch_args)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_arch(spec, cfg.arch, cfg.arch_args)

    return SchemeRun(cfg=cfg, data=data, teachers=teachers, new_student=new_student, ctx=ctx,
                     checkpoint=ctx.path(CHECKPOINTS["distill"]))
