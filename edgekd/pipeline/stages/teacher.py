"""The teacher stage: the teacher trained (on the labeled images, or semi-supervised on every
train image: edgekd.train.semi_supervised), loaded from weights, or transferred from pretrained
weights (edgekd.train.transfer); plus the extra teachers of multi-teacher KD."""

from __future__ import annotations

from edgekd.pipeline.context import Context, StageResult, build_arch, degenerate_flags, fit_summary, model_summary
from edgekd.pipeline.layout import CHECKPOINTS, TEACHER_WEIGHTS, extra_teacher_checkpoint, extra_teacher_file
from edgekd.train.config import TeacherConfig


def run(ctx: Context, cfg: TeacherConfig, inputs: dict) -> StageResult:
    """Train the teacher, or load its weights (and fine-tune them when epochs > 0).

    inputs: `splits`, `tensors` (the labeled train images only, repeated in turn to the train
    split's size when labels are scarce (edgekd.data.unlabeled) and a teacher learns from them
    supervised; only its val split is read otherwise), `all_tensors` (the whole train
    split, its unlabeled images too: teacher.semi_supervised), and
    `extra_teachers`: the TeacherConfigs of distill.extra_teachers when the distillation scheme
    learns from them, else []."""
    from edgekd.io.artifacts import load_weights, save_weights
    from edgekd.train.evaluate import accuracy

    spec, t = inputs["splits"].spec, inputs["tensors"]
    if cfg.onnx is not None:
        return _onnx_teacher(ctx, cfg, inputs)
    teacher = build_arch(spec, cfg.arch, cfg.arch_args)
    if cfg.weights is not None:
        load_weights(teacher, cfg.weights)
    record = {}
    if cfg.transfer is not None:  # pretrained backbone, new head: head-only phase, then fine-tuning
        from edgekd.train.transfer import transfer

        phases = transfer(teacher, cfg=cfg, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                          val_y=t["val_y"], seed=ctx.seed, progress=ctx.progress,
                          checkpoint_dir=ctx.path("state"), resume=ctx.resume, log=ctx.log)
        record.update(fit_summary(phases.pop("fit")))
        record.update(phases)
    elif cfg.epochs > 0:
        teacher, trained = _train(ctx, teacher, cfg, inputs, seed=ctx.seed, desc="teacher",
                                  checkpoint=ctx.path(CHECKPOINTS["teacher"]))
        record.update(trained)
    save_weights(teacher, ctx.path(TEACHER_WEIGHTS))
    record.update(model_summary(teacher, cfg.arch, spec))
    record["val_top1"] = accuracy(teacher, t["val_x"], t["val_y"])
    record["flags"] = degenerate_flags(ctx, "teacher", teacher, t["val_x"], t["val_y"], spec.num_classes)
    record["weights"] = TEACHER_WEIGHTS
    if "images" not in record:  # loaded or transferred: what a supervised teacher learns from
        record.update(_labeled_only(inputs))
    ctx.log(f"[teacher] {cfg.arch}: val top-1 {record['val_top1']:.2f}%")
    if inputs["extra_teachers"]:
        record["extra_teachers"] = _extra_teachers(ctx, inputs)
    return StageResult(record, {"teacher": teacher})


def _train(ctx: Context, model, cfg: TeacherConfig, inputs: dict, *, seed: int, desc: str, checkpoint):
    """Train a teacher (the main one or an extra one): on the labeled images (repeated), or with
    cfg.semi_supervised on the whole train split (edgekd.train.semi_supervised). Returns the
    trained model (with semi_supervised, maybe its moving average) and what its record gains."""
    from edgekd.train.loop import cross_entropy_step, fit

    if cfg.semi_supervised is not None:
        from edgekd.data.unlabeled import image_counts
        from edgekd.train.semi_supervised import train_semi_supervised

        every = inputs["all_tensors"]
        model, fit_result, details = train_semi_supervised(
            model, cfg, train_x=every["train_x"], train_y=every["train_y"], val_x=every["val_x"],
            val_y=every["val_y"], seed=seed, desc=desc, progress=ctx.progress, checkpoint=checkpoint,
            resume=ctx.resume, log=ctx.log)
        share = details["pseudo_labeled_fraction"]
        labeled = "no unlabeled images" if share is None else f"{share:.0%} of the unlabeled images pseudo-labeled"
        ctx.log(f"[{desc}] semi-supervised: {labeled} on average; val top-1 {details['model_val_top1']:.2f}% (model), "
                f"{details['ema_val_top1']:.2f}% (moving average): the {details['continues']} continues")
        return model, {**fit_summary(fit_result), "semi_supervised": details,
                       "images": image_counts(every["train_y"])}
    t = inputs["tensors"]
    fit_result = fit(model, cross_entropy_step(model), train_x=t["train_x"], train_y=t["train_y"],
                     val_x=t["val_x"], val_y=t["val_y"], cfg=cfg, seed=seed, desc=desc, progress=ctx.progress,
                     checkpoint=checkpoint, resume=ctx.resume, log=ctx.log)
    return model, {**fit_summary(fit_result), **_labeled_only(inputs)}


def _labeled_only(inputs: dict) -> dict:
    """The images a supervised teacher learns from: the labeled share only when labels are
    scarce, repeated in turn to the train split's size per epoch."""
    from edgekd.data.unlabeled import image_counts

    labeled = image_counts(inputs["all_tensors"]["train_y"])["labeled"]
    record = {"images": {"labeled": labeled, "unlabeled": 0}}
    if labeled < len(inputs["tensors"]["train_y"]):
        record["images_per_epoch"] = len(inputs["tensors"]["train_y"])
    return record


def _onnx_teacher(ctx: Context, cfg: TeacherConfig, inputs: dict) -> StageResult:
    """teacher.onnx: nothing trains; the model is checked on val (ONNX Runtime: every batch's
    logits are checked as in preflight, edgekd.distill.onnx_teacher) and the extra teachers,
    if any, are trained or loaded as usual."""
    from edgekd.distill.onnx_teacher import open_teacher
    from edgekd.runtime.session import count_params
    from edgekd.train.evaluate import accuracy

    spec, t = inputs["splits"].spec, inputs["tensors"]
    teacher = open_teacher(cfg.onnx, spec)
    record = {"arch": f"onnx:{cfg.onnx}", "onnx": cfg.onnx, "params": count_params(cfg.onnx), "macs": None,
              "val_top1": accuracy(teacher, t["val_x"], t["val_y"])}
    if teacher.class_note is not None:  # reordered, or unchecked: the record and the log say which
        record["classes"] = teacher.class_note
        ctx.log(f"[teacher] {teacher.class_note}")
    if teacher.order is not None:
        record["teacher_class_order"] = list(teacher.class_names)
    if teacher.fixed_batch is not None:
        record["fixed_batch"] = teacher.fixed_batch
        ctx.log(f"[teacher] the ONNX teacher takes a fixed batch of {teacher.fixed_batch}: it is fed in chunks")
    ctx.log(f"[teacher] ONNX teacher {cfg.onnx}: val top-1 {record['val_top1']:.2f}% (ONNX Runtime)")
    if inputs["extra_teachers"]:
        record["extra_teachers"] = _extra_teachers(ctx, inputs)
    return StageResult(record, {"teacher": teacher})


def _extra_teachers(ctx: Context, inputs: dict) -> list[dict]:
    """Multi-teacher KD: train or load each extra teacher like the main one, with its own
    per-epoch checkpoint (so --resume continues it) and weights file."""
    from edgekd.io.artifacts import load_weights, save_weights
    from edgekd.train.evaluate import accuracy

    spec, t = inputs["splits"].spec, inputs["tensors"]
    summaries = []
    for i, cfg in enumerate(inputs["extra_teachers"], start=1):
        model = build_arch(spec, cfg.arch, cfg.arch_args)
        if cfg.weights is not None:
            load_weights(model, cfg.weights)
        summary = {}
        if cfg.epochs > 0:
            model, trained = _train(ctx, model, cfg, inputs, seed=ctx.seed + i, desc=f"teacher.extra{i}",
                                    checkpoint=ctx.path(extra_teacher_checkpoint(i)))
            summary.update(trained)
        save_weights(model, ctx.path(extra_teacher_file(i)))
        summary.update(model_summary(model, cfg.arch, spec))
        summary.update(val_top1=accuracy(model, t["val_x"], t["val_y"]), weights=extra_teacher_file(i))
        ctx.log(f"[teacher] extra teacher {i} {cfg.arch}: val top-1 {summary['val_top1']:.2f}%")
        summaries.append(summary)
    return summaries
