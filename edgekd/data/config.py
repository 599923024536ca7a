"""The recipe's `data` section: which dataset (a name in edgekd.data.formats.FORMATS or a
path) and how it is split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgekd.configtools import MAX_BATCH_SIZE, check_number, check_path, clip, require
from edgekd.data.formats import FORMATS, unknown_dataset

MAX_IMAGES = 10**9  # limit_train / limit_test: more than any dataset held in memory


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split.

    name: a registered dataset format (edgekd.data.formats.FORMATS; the default is the
    embedded 'fashion-mnist-subset'), or the path of an .npz file or IDX folder;
    path: where the format looks (a folder or a file).
    """

    name: str = "fashion-mnist-subset"
    path: Optional[str] = None
    val_fraction: float = 0.1
    calib_size: int = 512
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None

    def __post_init__(self):
        check_path(self.name, "data.name", optional=False)
        if self.name not in FORMATS and not is_existing_path(self.name):
            error = unknown_dataset(self.name)
            raise type(error)(clip(str(error))) from None
        check_path(self.path, "data.path")
        check_number(self.val_fraction, "data.val_fraction")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction must be between 0 and 1")
        check_number(self.calib_size, "data.calib_size", high=MAX_BATCH_SIZE, integer=True)
        require(self.calib_size > 0, "data.calib_size must be positive")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            check_number(value, f"data.{key}", high=MAX_IMAGES, integer=True, optional=True)
            require(value is None or value > 0, f"data.{key} must be positive")


def is_existing_path(name) -> bool:
    """Whether data.name names an existing file or folder (which load_splits then reads by its type)."""
    try:
        return isinstance(name, str) and bool(name) and Path(name).expanduser().exists()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte
        return False
