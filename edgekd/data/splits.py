"""Datasets as uint8 NCHW numpy arrays, split into train / val / test / calibration.

numpy only: no torch here, so evaluating an ONNX model needs nothing heavier. PIL is
imported only where image files are read (data/image_files.py).

    splits = load_splits(DataConfig(name="fashion-mnist-subset"), seed=0)
    splits.train_x.shape  # (9000, 1, 28, 28), uint8

Small datasets are held as arrays and trained from one float tensor; large ones and image
files with a data.image_size are streamed (`Splits.stream`, data/image_file_splits.py, data/stream.py).

A dataset is named by its format (edgekd.data.formats.FORMATS, which users extend) or
by a path. Every missing or malformed input is a DataError whose one-line message says
what was expected, where it looked and how to get it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.base import MAX_CHANNELS, MAX_CLASS_NAME, MAX_CLASSES, RawArrays, check_image_size
from edgekd.data.config import DataConfig
from edgekd.data.fitting import decode_dataset
from edgekd.data.formats import FORMATS, FileLister, unknown_dataset
from edgekd.data.formats.idx import IDX_FILES, find_idx_file, read_idx_folder
from edgekd.data.formats.npz import load_npz
from edgekd.data.image_file_splits import file_splits, list_files, list_path, listed
from edgekd.data.splitting import (  # noqa: F401 - channel_mean_std: still importable from here
    DataSpec,
    Splits,
    array_splits,
    channel_mean_std,
)
from edgekd.errors import DataError
from edgekd.io.artifacts import atomic_path


def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """Load cfg's dataset and split it; the same seed always gives the same splits."""
    files = list_files(cfg)
    if files is not None:
        return file_splits(files, cfg, seed)
    return array_splits(_load(cfg.name, cfg.path), cfg, seed)


def load_arrays(name: str, path: str | None = None):
    """Return (train_x, train_y, test_x, test_y, class_names): uint8 NCHW images, int64 labels."""
    raw = _load(name, path)
    return raw.train_x, raw.train_y, raw.test_x, raw.test_y, raw.class_names


def save_eval_set(path, x_uint8: np.ndarray, y: np.ndarray, spec: DataSpec) -> None:
    """Write a portable eval set (x, y, class_names, mean, std) that np.load reads without pickle.

    Atomic (see artifacts.atomic_path): a crash never leaves a half-written file.
    """
    x = np.asarray(x_uint8)
    y = np.asarray(y)
    if x.dtype != np.uint8 or x.shape[1:] != (spec.channels, spec.height, spec.width):
        raise DataError(
            f"eval set for {path} must be uint8 images of shape (N, {spec.channels}, {spec.height}, "
            f"{spec.width}), got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"eval set for {path} needs one label per image, got {len(x)} images and labels {y.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            x=x,
            y=y.astype(np.int64),
            class_names=np.array(spec.class_names, dtype=str),  # unicode, not object: no pickle
            mean=np.array(spec.mean, dtype=np.float32),
            std=np.array(spec.std, dtype=np.float32),
        )


def _load(name: str, path: str | None) -> RawArrays:
    """The registered format `name`, else `name` read as a path; checked before it is returned."""
    entry = FORMATS.get(name) if name in FORMATS else None
    if isinstance(entry, FileLister):
        raw = decode_dataset(listed(name, entry, path, False))
    elif entry is not None:
        raw = entry(name, path)
        if not isinstance(raw, RawArrays):
            raise DataError(
                f"dataset format '{name}' returned a {type(raw).__name__}; "
                "its loader must return edgekd.data.formats.RawArrays"
            )
    else:
        raw = _load_by_path(name)
    if isinstance(raw.class_names, list):  # a loader of a user's may give a list
        raw = raw._replace(class_names=tuple(raw.class_names))
    _check_arrays(raw)
    return raw


def _load_by_path(name: str) -> RawArrays:
    """A dataset name may also be a path: an .npz file, or a folder of IDX files."""
    candidate = Path(name).expanduser()
    if candidate.is_file() and candidate.suffix == ".npz":
        return load_npz(candidate, candidate.stem)
    if candidate.is_dir() and find_idx_file(candidate, IDX_FILES["train_x"]):
        return read_idx_folder(candidate, candidate.name)
    files = list_path(candidate)
    if files is not None:
        return decode_dataset(files)
    raise unknown_dataset(name)


def _check_arrays(raw: RawArrays) -> None:
    """Checks shared by every loader, so load_splits can trust the arrays."""
    names = raw.class_names
    if not isinstance(names, tuple) or not 0 < len(names) <= MAX_CLASSES:
        count = len(names) if isinstance(names, (tuple, list)) else type(names).__name__
        raise DataError(f"{raw.source}: class_names must be a tuple of 1 to {MAX_CLASSES:,} names, got {count}")
    if not all(isinstance(n, str) and len(n) <= MAX_CLASS_NAME for n in names):
        raise DataError(f"{raw.source}: class names must be strings of at most {MAX_CLASS_NAME} characters")
    for split in ("train", "test"):
        x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise DataError(f"{raw.source}: {split} images and labels must be numpy arrays")
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{raw.source}: {split} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != (len(x),):
            raise DataError(f"{raw.source}: {len(x)} {split} images but labels of shape {y.shape}; need one label each")
        if len(x) == 0:
            raise DataError(f"{raw.source}: the {split} split is empty; it needs at least one image")
        if y.min() < 0 or y.max() >= len(raw.class_names):
            raise DataError(
                f"{raw.source}: {split} labels must be in 0..{len(raw.class_names) - 1} "
                f"({len(raw.class_names)} class names), found {y.min()}..{y.max()}"
            )
    _, channels, height, width = raw.train_x.shape
    if not 1 <= channels <= MAX_CHANNELS:
        raise DataError(f"{raw.source}: images have {channels} channels; expected 1 to {MAX_CHANNELS} (N, C, H, W)")
    check_image_size(height, width, raw.source)
    if raw.train_x.shape[1:] != raw.test_x.shape[1:]:
        raise DataError(
            f"{raw.source}: train images are {raw.train_x.shape[1:]} but test images are "
            f"{raw.test_x.shape[1:]}; both must be (C, H, W) alike"
        )


