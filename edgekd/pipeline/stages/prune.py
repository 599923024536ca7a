"""The optional prune stage: channels removed from the distilled student by ratio, MACs or
measured latency, with KD fine-tuning from the teacher."""

from __future__ import annotations

import json

from edgekd.io.artifacts import atomic_write_text
from edgekd.pipeline.context import Context, StageResult, degenerate_flags, input_shape_of
from edgekd.pipeline.layout import PRUNED_SHAPES, PRUNED_WEIGHTS
from edgekd.pipeline.stage_inputs import PruneInputs
from edgekd.prune.config import PruneConfig


def run(ctx: Context, cfg: PruneConfig, inputs: PruneInputs | None) -> StageResult:
    """Remove channels from the student, fine-tuning it with KD from the teacher after each
    step (or once at the end): to a share of the channels, a MACs count, or a measured
    latency (prune.target_latency_ms / target_speedup, edgekd.prune.latency).

    inputs: edgekd.pipeline.stage_inputs.PruneInputs (None when pruning is off)."""
    import dataclasses

    from edgekd.data.unlabeled import image_counts
    from edgekd.distill.offline import distill
    from edgekd.io.artifacts import save_weights
    from edgekd.models.blocks import deployed
    from edgekd.models.cost import count_macs, count_params
    from edgekd.models.shapes import layer_shapes
    from edgekd.prune.channels import PrunePlan, channel_table, prune_channels, sparsity_train
    from edgekd.train.evaluate import accuracy

    if not cfg.enabled:
        for name in (PRUNED_WEIGHTS, PRUNED_SHAPES):  # stale files of an earlier --force run
            ctx.path(name).unlink(missing_ok=True)
        return StageResult({"enabled": False})
    t, teacher = inputs.data, inputs.teacher
    student = deployed(inputs.student)  # RepConv branches fused: pruned as deployed (store.py reloads it so)
    shape = input_shape_of(inputs.splits.spec)
    # the sparsity and fine-tuning runs keep no per-epoch checkpoint and write no notes (their
    # epoch lines and metrics files stay: edgekd.pipeline.epoch_log)
    quiet = ctx.run_options("distill").with_(log=None)
    before = {"params": count_params(student), "macs": count_macs(student, shape), "channels": channel_table(student)}
    extra = {}
    if cfg.sparsity > 0 and cfg.sparsity_epochs > 0:  # network slimming: push unneeded BN scales to zero
        slim = sparsity_train(student, inputs.labeled, dataclasses.replace(cfg, epochs=cfg.sparsity_epochs),
                              quiet.with_(name="prune.sparsity"), penalty=cfg.sparsity)
        extra["sparsity"] = {"penalty": cfg.sparsity, "epochs": cfg.sparsity_epochs, "val_top1": slim.best_val_top1}
    finetune = dataclasses.replace(inputs.kd, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                   weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, augment=cfg.augment)
    history = []

    def finetune_step(step: int) -> None:
        if finetune.epochs == 0:
            return
        result = distill(student, teacher, t, finetune, quiet.with_(seed=ctx.seed + step, name=f"prune.step{step}"))
        history.append({"step": step, "macs": count_macs(student, shape), "val_top1": result.best_val_top1})

    each_step = cfg.finetune == "step"
    labeled = inputs.labeled
    batch = (labeled.train_x[: cfg.batch_size], labeled.train_y[: cfg.batch_size])  # gradients for 'taylor'
    if cfg.latency_targeted:
        extra["latency"] = _prune_to_latency(ctx, cfg, inputs, student, shape, batch, finetune_step).to_dict()
    else:
        prune_channels(student, PrunePlan.of(cfg), input_shape=shape, loss_batch=batch,
                       after_step=finetune_step if each_step else None)
        if not each_step:
            finetune_step(cfg.steps)
    atomic_write_text(ctx.path(PRUNED_SHAPES), json.dumps(layer_shapes(student), indent=1))
    save_weights(student, ctx.path(PRUNED_WEIGHTS))
    after = {"params": count_params(student), "macs": count_macs(student, shape), "channels": channel_table(student)}
    val_top1 = accuracy(student, t.val)
    extra["flags"] = degenerate_flags(ctx, "pruned student", student, t.val_x, t.val_y, inputs.splits.spec.num_classes)
    ctx.log(f"[prune] MACs {before['macs']:,} -> {after['macs']:,}, params {before['params']:,} -> "
            f"{after['params']:,}, val top-1 {val_top1:.2f}%")
    if finetune.epochs:  # the KD fine-tuning's images (labels are scarce: KD alone on the unlabeled ones)
        extra["images"] = image_counts(t.train_y)
    return StageResult({"enabled": True, "before": before, "after": after, "steps": history, "val_top1": val_top1,
            "params": after["params"], "macs": after["macs"], "weights": PRUNED_WEIGHTS, "shapes": PRUNED_SHAPES,
            **extra}, {"student": student})


def _prune_to_latency(ctx: Context, cfg: PruneConfig, inputs: PruneInputs, student, shape, loss_batch, finetune):
    """Latency-targeted pruning of the prune stage: candidates timed in the deployed format
    (int8 when the quantize stage is on) on bench.provider, batch 1, bench.threads. A
    target not reached is a warning, not an error: the most-pruned model goes on."""
    from edgekd.prune.latency import prune_to_latency
    from edgekd.train.tensors import to_tensor

    spec = inputs.splits.spec
    # 128 calibration images: a candidate is only timed, and quantizing it must stay cheap
    calib = to_tensor(inputs.splits.calib_x[:128], spec.mean, spec.std).numpy()
    _, result = prune_to_latency(student, input_shape=shape, cfg=cfg, calib_images=calib, deployed=inputs.deployed,
                                 loss_batch=loss_batch, finetune=finetune, log=ctx.log)
    return result
