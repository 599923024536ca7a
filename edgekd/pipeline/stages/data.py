"""The data stage: the splits are loaded (by the chain; bad images were refused or skipped
there, before the run directory existed) and the test split is written as the portable eval
set (eval.npz, at the model's input size, at most data.eval_size images) for benching on a
device. A fingerprint of the data is kept (pipeline/resume.py): `--resume` refuses a run whose
data changed since."""

from __future__ import annotations

from edgekd.data.config import DataConfig
from edgekd.pipeline.context import Context, StageResult
from edgekd.pipeline.layout import EVAL_SET
from edgekd.pipeline.stage_inputs import DataInputs


def run(ctx: Context, cfg: DataConfig, inputs: DataInputs) -> StageResult:
    """inputs: the splits."""
    from edgekd.data.image_file_splits import FILES_FINGERPRINT
    from edgekd.data.splits import save_eval_set
    from edgekd.pipeline.resume import data_fingerprint, save_data_fingerprint

    splits = inputs.splits
    spec = splits.spec
    save_eval_set(ctx.path(EVAL_SET), splits.test_x, splits.test_y, spec)
    stream = splits.stream
    record = {
        "dataset": spec.name,
        "source": spec.source,
        "shape": [spec.channels, spec.height, spec.width],
        "classes": spec.num_classes,
        "train": len(splits.train_y),
        "val": len(stream.val) if stream is not None and stream.kind == "files" else
        len(stream.val[1]) if stream is not None else len(splits.val_y),
        "test": len(splits.test_y),
        "calib": len(splits.calib_y),
        "streaming": stream.kind if stream is not None else False,
        "preprocess": {"resize_shorter": spec.resize, "center_crop": [spec.height, spec.width],
                       "mean": list(spec.mean), "std": list(spec.std)},
    }
    record.update({k: v for k, v in splits.record.items() if k != FILES_FINGERPRINT})
    record["fingerprint"] = save_data_fingerprint(ctx.run_dir, data_fingerprint(splits))
    if splits.record.get("unlabeled"):
        ctx.log(f"[data] {record['labeled']:,} labeled and {record['unlabeled']:,} unlabeled train images: the "
                "teacher learns from the labeled ones (from all with teacher.semi_supervised), the student from "
                "all (KD alone on the unlabeled)")
    skipped = splits.record.get("skipped")
    if skipped:
        from edgekd.data.image_files import named_files

        total = sum(sum(v.values()) if isinstance(v, dict) else v for v in skipped.values())
        first = splits.record.get("skipped_files")
        files = sum(sum(v.values()) for v in skipped.values() if isinstance(v, dict))  # not the empty folders
        ctx.log(f"[data] skipped {total} bad image(s) or empty class folder(s) (data.skip_bad): {skipped}"
                + (f"; first: {named_files(first, files)}" if first else ""))
    split = splits.record.get("split")
    if split:
        ctx.log(f"[data] {spec.source} has class folders only: {split['test']:,} of its images "
                f"({split['test_fraction']:.0%} of each class, seed {split['seed']}) held out as the test split, "
                "the same in every run")
    if splits.record.get("upscaled_images"):
        ctx.log(f"[data] {splits.record['upscaled_images']:,} image(s) smaller than data.image_size "
                f"({spec.width}x{spec.height}) resized up")
    if cfg.augment_policy is not None and (stream is None or stream.kind != "files"):
        record["augment_policy_ignored"] = True
        ctx.log(f"[data] note: data.augment_policy {cfg.augment_policy} applies to streamed image files (data.image_size "
                "set); these images train with the in-memory augmentation (shift and flip)")
    if stream is not None:
        ctx.log(f"[data] streaming {record['train']:,} train and {record['val']:,} val images ({stream.kind}"
                + (f", {stream.workers} worker(s)" if stream.kind == "files" else "") + "); eval.npz holds "
                f"{record['test']:,} test images at {spec.width}x{spec.height}")
    return StageResult(record)
