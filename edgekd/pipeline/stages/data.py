"""The data stage: the splits are loaded (by the chain) and the test split is written as the
portable eval set (eval.npz) for benching on a device."""

from __future__ import annotations

from edgekd.data.config import DataConfig
from edgekd.pipeline.context import Context, StageResult
from edgekd.pipeline.layout import EVAL_SET


def run(ctx: Context, cfg: DataConfig, inputs: dict) -> StageResult:
    """inputs: `splits`."""
    from edgekd.data.splits import save_eval_set

    splits = inputs["splits"]
    spec = splits.spec
    save_eval_set(ctx.path(EVAL_SET), splits.test_x, splits.test_y, spec)
    return StageResult({
        "dataset": spec.name,
        "source": spec.source,
        "shape": [spec.channels, spec.height, spec.width],
        "classes": spec.num_classes,
        "train": len(splits.train_y),
        "val": len(splits.val_y),
        "test": len(splits.test_y),
        "calib": len(splits.calib_y),
    })
