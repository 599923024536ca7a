"""What every dataset format shares: RawArrays (a loader's result) and the helpers that
find a dataset's folder and name its classes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgekd.errors import DataError

SYSTEM_DATA_DIR = "/usr/share/datasets"  # where Debian's dataset-* packages install


class RawArrays(NamedTuple):
    """A loader's result: uint8 (N, C, H, W) images, int64 labels in 0..len(class_names)-1,
    and `source`, where they were read from (for messages and DataSpec.source)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str


def need_path(name: str, path: str | None, what: str) -> str:
    """`path`, or a DataError saying that dataset `name` needs --data-path `what`."""
    if not path:
        raise DataError(f"dataset '{name}' needs a path; pass --data-path {what}")
    return path


def search_dirs(name: str, path: str | None, extra: tuple[str, ...] = ()) -> list[Path]:
    """Folders to look in, in order: the given path, else $EDGEKD_DATA, then the system folder."""
    if path:
        roots = [Path(path).expanduser()]
    else:
        env = os.environ.get("EDGEKD_DATA")
        roots = ([Path(env).expanduser()] if env else []) + [Path(SYSTEM_DATA_DIR)]
    dirs: list[Path] = []
    for root in roots:
        for candidate in [root, root / name, *(root / sub for sub in extra)]:
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def generic_class_names(*labels: np.ndarray) -> tuple[str, ...]:
    """'0', '1', ... up to the largest label, for datasets that do not name their classes."""
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    return tuple(str(i) for i in range(top + 1))

