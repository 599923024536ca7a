"""TODO docstring (pipeline -> pipeline.stages.data)"""

from __future__ import annotations

from edgekd.pipeline.context import Run, run_splits
from edgekd.pipeline.layout import EVAL_SET


def stage_data(run: Run) -> dict:
    """Load and split the dataset; write the test split as the portable eval set."""
    from edgekd.data.splits import save_eval_set

    splits = run_splits(run)
    save_eval_set(run.path(EVAL_SET), splits.test_x, splits.test_y, splits.spec)
    spec = splits.spec
    return {
        "dataset": spec.name,
        "source": spec.source,
        "shape": [spec.channels, spec.height, spec.width],
        "classes": spec.num_classes,
        "train": len(splits.train_y),
        "val": len(splits.val_y),
        "test": len(splits.test_y),
        "calib": len(splits.calib_y),
    }
