"""Preflight of the recipe values that only a later stage reads (edgekd.pipeline.preflight
calls check_values): each is checked with the function that stage uses, before the run
directory exists, so that a bad value costs seconds instead of a trained teacher.

- the validation split: at least as many images as classes (it picks each training stage's
  best epoch) and, with an int8 accuracy budget, enough images that one is worth at most
  quantize.max_drop top-1 points (edgekd.quant.budget.min_val_images);
- teacher.semi_supervised (an extra teacher's too): the train split in memory, with labels
  (edgekd.train.semi_supervised.check_data, on the tensors the teacher stage gets);
- quantize.calibration names a method this onnxruntime has (ptq.ort_calibration_method);
- quantize.exclude_nodes / exclude_op_types: the untrained student (pruned as the dry run
  pruned it) is exported with the export stage's to_onnx, pre-processed with ptq.prepare, and
  read by ptq.check_exclusions, as ptq reads the trained one. The node names come from the
  module names, which training and pruning keep (pruning changes channel counts, not layers);
- bench's session config and provider options: a session on a one-node model
  (edgekd.runtime.session.check_session_options).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from pathlib import Path

from edgekd.errors import ConfigError, GateFailed
from edgekd.recipe import Recipe

TRAINING_STAGES = ("teacher", "distill", "prune")  # each picks its best epoch on val


def check_values(recipe: Recipe, store, student, done=()) -> None:
    """Raise the first error of the values below; `student`: the untrained student as the
    export stage will get it (pruned when prune is on)."""
    splits = store.splits()
    quant = recipe.quantize
    budget = quant.enabled and "quantize" not in done
    if budget or any(stage not in done for stage in TRAINING_STAGES):
        check_val_size(recipe, splits, budget=budget)
    if "teacher" not in done:
        check_semi_supervised(recipe, store)
    if quant.enabled and quant.method == "ptq" and "quantize" not in done:
        from edgekd.quant.ptq import ort_calibration_method

        ort_calibration_method(quant.calibration)
        if quant.exclude_nodes or quant.exclude_op_types:
            check_quant_exclusions(recipe, student, splits.spec)
    if "bench" not in done:
        from edgekd.runtime.session import check_session_options

        check_session_options(recipe.bench)


def check_val_size(recipe: Recipe, splits, *, budget: bool) -> None:
    """The val split can pick epochs (as many images as classes) and, with `budget`, judge
    quantize.max_drop (budget.min_val_images, on the val images the quantize stage uses)."""
    from edgekd.quant.budget import min_val_images

    used = len(splits.val_y)  # the quantize stage's val set: capped in memory when streaming
    full = _streamed_val_size(splits) or used  # the training stages' val set
    pool = full + len(splits.train_y) - int(splits.record.get("unlabeled_from_path", 0))  # images val is drawn from
    classes = splits.spec.num_classes
    fraction = recipe.data.val_fraction
    where = f"data.val_fraction {fraction:g} of {pool:,} train images"
    if full < classes:
        raise ConfigError(f"the validation split has {full} image(s) ({where}) for {classes} classes: it picks each "
                          f"training stage's best epoch and needs at least one image per class; "
                          f"{_raise_fraction(classes, pool)}")
    max_drop = recipe.quantize.max_drop
    need = min_val_images(max_drop) if budget else None
    if need is None or used >= need:
        return
    if used < full:
        more = f"raise data.eval_size to {need} (the in-memory val set holds {used} of the {full} val images)"
    else:
        more = _raise_fraction(need, pool)
    enough = math.ceil(10000 / used) / 100  # the smallest budget in hundredths that `used` images resolve
    raise ConfigError(f"the validation split has {used} images ({where}), so one image is {100 / used:.3g} top-1 "
                      f"points: it cannot judge the int8 accuracy budget quantize.max_drop {max_drop:g}, which needs "
                      f"at least {need} images (100 / max_drop); {more}, raise quantize.max_drop to "
                      f"{enough:g} or more, or set quantize.max_drop: null (no budget)")


def _streamed_val_size(splits) -> int | None:
    stream = splits.stream
    if stream is None:
        return None
    return len(stream.val[1]) if stream.kind == "arrays" else len(stream.val.labels)


def _raise_fraction(images: int, pool: int) -> str:
    share = images / max(pool, 1)
    if share >= 0.5:
        return f"the data has too few images for {images} in val: use more data"
    return f"raise data.val_fraction to about {share:.2g} or more ({images} images)"


def check_semi_supervised(recipe: Recipe, store) -> None:
    """Each teacher that trains semi-supervised gets what train_semi_supervised needs."""
    from edgekd.distill.config import extra_teacher_configs
    from edgekd.pipeline.stages.distill import learns_from_teacher

    teachers = [("teacher", recipe.teacher)]
    if learns_from_teacher(recipe.distill):
        teachers += [(f"distill.extra_teachers[{i}]", cfg) for i, cfg in
                     enumerate(extra_teacher_configs(recipe.distill))]
    semi = [where for where, cfg in teachers if cfg.semi_supervised is not None]
    if not semi:
        return
    from edgekd.train.semi_supervised import check_data

    every = store.tensors()  # the teacher stage's `every` (kept by the store for it)
    for where in semi:
        check_data(every.train_x, every.train_y, where)


def check_quant_exclusions(recipe: Recipe, student, spec) -> None:
    """quantize.exclude_nodes / exclude_op_types against the student's pre-processed graph."""
    import onnx

    from edgekd.onnx_export import to_onnx
    from edgekd.pipeline.context import input_shape_of
    from edgekd.quant.ptq import check_exclusions, prepare

    export = dataclasses.replace(recipe.export, check_batch_sizes=[1])
    with tempfile.TemporaryDirectory(prefix="edgekd-preflight-") as work:
        fp32, prepared = Path(work) / "student.onnx", Path(work) / "prepared.onnx"
        try:
            to_onnx(copy.deepcopy(student), fp32, input_shape=input_shape_of(spec), metadata={}, cfg=export)
        except GateFailed:  # an untrained model's parity is not this check's business: the stage checks
            return
        prepare(fp32, prepared)
        check_exclusions(onnx.load(str(prepared)), recipe.quantize)
