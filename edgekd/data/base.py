"""What every dataset format shares: RawArrays (a loader's result) and the helpers that
find a dataset's folder and name its classes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgekd.errors import ConfigError, DataError
from edgekd.io.membudget import UNKNOWN_MEMORY, check_memory, memory_budget, size_text  # noqa: F401 - shared here

SYSTEM_DATA_DIR = "/usr/share/datasets"  # where Debian's dataset-* packages install

MAX_CLASSES = 100_000  # class names, and the largest label + 1 of a dataset without names
CLASSES_PER_IMAGE = 10  # without names, the largest label + 1 is at most this many times the images
MAX_CLASS_NAME = 1024  # characters of one class name
MIN_IMAGE_SIDE = 2  # pixels: a 1x1 image has no spatial structure to learn from
MAX_CHANNELS = 1024


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


def generic_class_names(*labels: np.ndarray, source: str = "the dataset") -> tuple[str, ...]:
    """'0', '1', ... up to the largest label, for datasets that do not name their classes.
    The largest label is bounded (MAX_CLASSES, and CLASSES_PER_IMAGE times the number of
    labels) before anything of its size is made: one huge label is a DataError."""
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    count = sum(len(y) for y in labels)
    limit = min(MAX_CLASSES, max(1, CLASSES_PER_IMAGE * count))
    if top + 1 > limit:
        raise DataError(
            f"{source}: the largest label is {top}, which would make {top + 1:,} classes, more than "
            f"{limit:,} (at most {MAX_CLASSES:,}, and {CLASSES_PER_IMAGE} per image: {count:,} labels); "
            "labels must be 0..number of classes - 1"
        )
    return tuple(str(i) for i in range(top + 1))


def check_batch_memory(batch_size: int, images: int, image_shape, key: str) -> None:
    """ConfigError when one float32 batch of `key` (min(batch_size, images) images of
    image_shape (C, H, W)) would exceed a quarter of the memory available: checked before
    any training, with a message that names the setting to lower."""
    per_image = 4
    for d in image_shape:
        per_image *= int(d)
    batch = min(int(batch_size), max(int(images), 1))
    check_memory(2 * batch * per_image, f"{key} {batch_size:,} ({batch:,} images of "
                 f"{' x '.join(str(int(d)) for d in image_shape)} as float32, twice for the gradients)",
                 f"lower {key}", error=ConfigError)


def check_image_size(height: int, width: int, source: str) -> None:
    """DataError for images smaller than MIN_IMAGE_SIDE pixels on a side (0x0, 1x1, ...)."""
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise DataError(f"{source}: images are {width}x{height} pixels; the minimum size is "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; use larger images")

