"""The teacher stage: the teacher trained (on the labeled images, or semi-supervised on every
train image: edgekd.train.semi_supervised), loaded from weights, or transferred from pretrained
weights (edgekd.train.transfer); plus the extra teachers of multi-teacher KD."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.pipeline.context import Context, StageResult, build_arch, degenerate_flags, fit_summary, model_summary
from edgekd.pipeline.layout import CHECKPOINTS, EXTRA_TEACHER_CHECKPOINT, EXTRA_TEACHER_WEIGHTS, TEACHER_WEIGHTS
from edgekd.pipeline.stage_inputs import TeacherInputs
from edgekd.train.config import TeacherConfig

if TYPE_CHECKING:
    from edgekd.train.plumbing import RunOptions


def run(ctx: Context, cfg: TeacherConfig, inputs: TeacherInputs) -> StageResult:
    """Train the teacher, or load its weights (and fine-tune them when epochs > 0); what
    `inputs` holds: edgekd.pipeline.stage_inputs.TeacherInputs."""
    from edgekd.io.artifacts import load_weights, save_weights
    from edgekd.train.evaluate import accuracy

    spec, t = inputs.splits.spec, inputs.data
    if cfg.onnx is not None:
        return _onnx_teacher(ctx, cfg, inputs)
    teacher = build_arch(spec, cfg.arch, cfg.arch_args)
    if cfg.weights is not None:
        load_weights(teacher, cfg.weights)
    record = {}
    if cfg.transfer is not None:  # pretrained backbone, new head: head-only phase, then fine-tuning
        from edgekd.train.transfer import transfer

        phases = transfer(teacher, t, cfg, ctx.run_options("teacher"), checkpoint_dir=ctx.path("state"))
        record.update(fit_summary(phases.pop("fit")))
        record.update(phases)
    elif cfg.epochs > 0:
        teacher, trained = _train(teacher, cfg, inputs, ctx.run_options("teacher", ctx.path(CHECKPOINTS["teacher"])))
        record.update(trained)
    save_weights(teacher, ctx.path(TEACHER_WEIGHTS))
    record.update(model_summary(teacher, cfg.arch, spec))
    record["val_top1"] = accuracy(teacher, t.val)
    record["flags"] = degenerate_flags(ctx, "teacher", teacher, t.val_x, t.val_y, spec.num_classes)
    record["weights"] = TEACHER_WEIGHTS
    if "images" not in record:  # loaded or transferred: what a supervised teacher learns from
        record.update(_labeled_only(inputs))
    ctx.log(f"[teacher] {cfg.arch}: val top-1 {record['val_top1']:.2f}%")
    if inputs.extra_teachers:
        record["extra_teachers"] = _extra_teachers(ctx, inputs)
    return StageResult(record, {"teacher": teacher})


def _train(model, cfg: TeacherConfig, inputs: TeacherInputs, run: RunOptions):
    """Train a teacher (the main one or an extra one): on the labeled images (repeated), or with
    cfg.semi_supervised on the whole train split (edgekd.train.semi_supervised). Returns the
    trained model (with semi_supervised, maybe its moving average) and what its record gains."""
    from edgekd.train.loop import cross_entropy_step, fit

    if cfg.semi_supervised is not None:
        from edgekd.data.unlabeled import image_counts
        from edgekd.train.semi_supervised import train_semi_supervised

        every = inputs.every
        model, fit_result, details = train_semi_supervised(model, every, cfg, run)
        share = details["pseudo_labeled_fraction"]
        labeled = "no unlabeled images" if share is None else f"{share:.0%} of the unlabeled images pseudo-labeled"
        run.log(f"[{run.desc}] semi-supervised: {labeled} on average; val top-1 "
                f"{details['model_val_top1']:.2f}% (model), "
                f"{details['ema_val_top1']:.2f}% (moving average): the {details['continues']} continues")
        return model, {**fit_summary(fit_result), "semi_supervised": details,
                       "images": image_counts(every.train_y)}
    fit_result = fit(model, cross_entropy_step(model), inputs.data, cfg, run)
    return model, {**fit_summary(fit_result), **_labeled_only(inputs)}


def _labeled_only(inputs: TeacherInputs) -> dict:
    """The images a supervised teacher learns from: the labeled share only when labels are
    scarce, repeated in turn to the train split's size per epoch."""
    from edgekd.data.unlabeled import image_counts

    labeled = image_counts(inputs.every.train_y)["labeled"]
    record = {"images": {"labeled": labeled, "unlabeled": 0}}
    if labeled < len(inputs.data.train_y):
        record["images_per_epoch"] = len(inputs.data.train_y)
    return record


def _onnx_teacher(ctx: Context, cfg: TeacherConfig, inputs: TeacherInputs) -> StageResult:
    """teacher.onnx: nothing trains; the model is checked on val (ONNX Runtime: every batch's
    logits are checked as in preflight, edgekd.distill.onnx_teacher) and the extra teachers,
    if any, are trained or loaded as usual."""
    from edgekd.distill.onnx_teacher import open_teacher
    from edgekd.runtime.session import count_params
    from edgekd.train.evaluate import accuracy

    spec = inputs.splits.spec
    teacher = open_teacher(cfg.onnx, spec)
    record = {"arch": f"onnx:{cfg.onnx}", "onnx": cfg.onnx, "params": count_params(cfg.onnx), "macs": None,
              "val_top1": accuracy(teacher, inputs.data.val)}
    if teacher.class_note is not None:  # reordered, or unchecked: the record and the log say which
        record["classes"] = teacher.class_note
        ctx.log(f"[teacher] {teacher.class_note}")
    if teacher.order is not None:
        record["teacher_class_order"] = list(teacher.class_names)
    if teacher.fixed_batch is not None:
        record["fixed_batch"] = teacher.fixed_batch
        ctx.log(f"[teacher] the ONNX teacher takes a fixed batch of {teacher.fixed_batch}: it is fed in chunks")
    ctx.log(f"[teacher] ONNX teacher {cfg.onnx}: val top-1 {record['val_top1']:.2f}% (ONNX Runtime)")
    if inputs.extra_teachers:
        record["extra_teachers"] = _extra_teachers(ctx, inputs)
    return StageResult(record, {"teacher": teacher})


def _extra_teachers(ctx: Context, inputs: TeacherInputs) -> list[dict]:
    """Multi-teacher KD: train or load each extra teacher like the main one, with its own
    per-epoch checkpoint (so --resume continues it) and weights file."""
    from edgekd.io.artifacts import load_weights, save_weights
    from edgekd.train.evaluate import accuracy

    spec = inputs.splits.spec
    summaries = []
    for i, cfg in enumerate(inputs.extra_teachers, start=1):
        model = build_arch(spec, cfg.arch, cfg.arch_args)
        if cfg.weights is not None:
            load_weights(model, cfg.weights)
        summary = {}
        if cfg.epochs > 0:
            run = ctx.run_options(f"teacher.extra{i}", ctx.path(EXTRA_TEACHER_CHECKPOINT.format(i)))
            model, trained = _train(model, cfg, inputs, run.with_(seed=ctx.seed + i))
            summary.update(trained)
        save_weights(model, ctx.path(EXTRA_TEACHER_WEIGHTS.format(i)))
        summary.update(model_summary(model, cfg.arch, spec))
        summary.update(val_top1=accuracy(model, inputs.data.val), weights=EXTRA_TEACHER_WEIGHTS.format(i))
        ctx.log(f"[teacher] extra teacher {i} {cfg.arch}: val top-1 {summary['val_top1']:.2f}%")
        summaries.append(summary)
    return summaries
