"""The stratified hold-out every split of edgekd uses (val from train, and test from class
folders that have no test/ folder: edgekd.data.class_folders): numpy only, below the dataset
formats, so that a format may split its files without importing edgekd.data.splitting."""

from __future__ import annotations

import numpy as np

from edgekd.errors import DataError


def stratified_split(y: np.ndarray, val_fraction: float, rng: np.random.Generator):
    """Shuffle, then hold out about val_fraction of each class. Returns (train_idx, val_idx)."""
    if len(y) < 2:
        raise DataError(f"need at least 2 training images to hold out a validation set, got {len(y)}")
    order = rng.permutation(len(y))
    is_val = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = order[y[order] == label]
        is_val[members[: int(round(val_fraction * len(members)))]] = True
    # Tiny datasets: rounding may give an empty val or an empty train.
    if not is_val.any():
        is_val[order[0]] = True
    if is_val.all():
        is_val[order[-1]] = False
    return order[~is_val[order]], order[is_val[order]]
