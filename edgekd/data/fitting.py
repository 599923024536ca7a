"""Images brought to the recipe's data settings, below the splitting modules (which import it):
arrays converted to data.channels and fitted to data.image_size (fit_arrays), and the image
files of a FileDataset checked and decoded into arrays (checked, decode_many, decode_dataset),
the answer of a lister format read as arrays and of the in-memory path of data/image_file_splits.py."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgekd.data.base import RawArrays, check_memory
from edgekd.data.config import DataConfig
from edgekd.data.image_files import (
    FIRST_NAMED,
    FileDataset,
    FileSplit,
    count_upscaled,
    dataset_mode,
    decode_fitted,
    first_bad,
    refuse_or_skip,
    scan,
    thread_map,
)
from edgekd.data.memory import shared_empty
from edgekd.data.preprocess import convert_channels, fit_array
from edgekd.errors import DataError


def fit_arrays(x: np.ndarray, cfg: DataConfig, source: str) -> np.ndarray:
    """Arrays in data.channels and at data.image_size (resize + center crop)."""
    if cfg.channels is not None and x.shape[1] != cfg.channels:
        if x.shape[1] not in (1, 3):
            raise DataError(f"{source}: images have {x.shape[1]} channels; data.channels {cfg.channels} converts "
                            "only grey and RGB images")
        x = convert_channels(x, cfg.channels)
    crop = cfg.crop
    if crop is None:
        return x
    return fit_array(x, cfg.resize, crop)  # images smaller than the crop are resized up (array_splits counts them)


class Checked(NamedTuple):
    """`checked`'s answer: the train and test files kept, the colour mode, the (height, width)
    every image is used at, the skipped counts ({split: {reason: count}}), how many images are
    smaller than data.image_size (resized up), and the first files skipped."""

    train: FileSplit
    test: FileSplit
    mode: str
    crop: tuple
    skipped: dict
    upscaled: int
    skipped_files: list


def check_all_files(ds: FileDataset, cfg: DataConfig) -> Checked:
    """Every file scanned: bad files refused or skipped, the colour mode chosen, and the size
    every image is used at (the crop, or the one size all images share)."""
    workers = max(1, cfg.worker_count())
    crop = cfg.crop
    splits, skipped, modes, sizes, first, upscaled = {}, dict(ds.skipped), set(), {}, [], 0
    for what, split in (("train", ds.train), ("test", ds.test)):
        found = scan(split.files, crop=crop, workers=workers)
        kept, bad = refuse_or_skip(found, split, cfg.skip_bad, what)
        if not len(kept):
            raise DataError(f"{ds.source}: every image of the {what} split is bad ({bad}); check the dataset")
        splits[what] = kept
        if bad:
            skipped[what] = bad
            first = (first + first_bad(found.bad))[:FIRST_NAMED]
        modes |= found.modes
        sizes[what] = found.sizes
        upscaled += count_upscaled(found.sizes, crop)
    if crop is None:
        crop = _common_size(splits, sizes)
    return Checked(splits["train"], splits["test"], dataset_mode(modes, cfg.channels), crop, skipped, upscaled, first)


def _common_size(splits: dict, sizes: dict) -> tuple[int, int]:
    """The one (height, width) every image has; a DataError naming the first that differs."""
    width, height = (int(v) for v in sizes["train"][0])
    first = splits["train"].files[0]
    for what in ("train", "test"):
        differ = np.flatnonzero((sizes[what][:, 0] != width) | (sizes[what][:, 1] != height))
        if len(differ):
            w, h = sizes[what][differ[0]]
            raise DataError(f"{splits[what].files[differ[0]]} is {w}x{h} but the first image ({first}) is "
                            f"{width}x{height}; all images must share one size: resize them first, or set "
                            "data.image_size to resize and crop them")
    return height, width


def decode_many(files: list, mode: str, resize: int | None, crop: tuple, workers: int,
                shared: bool = False) -> np.ndarray:
    """uint8 (N, C, crop height, crop width): every file decoded and fitted, in a thread pool.
    `shared`: in a shared mapping, which the forked DataLoader workers do not count
    (edgekd.data.memory)."""
    channels = 1 if mode == "L" else 3
    shape = (len(files), channels, *crop)
    out = shared_empty(shape) if shared else np.empty(shape, dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = decode_fitted(files[i], mode, resize, crop)

    thread_map(one, list(range(len(files))), max(1, workers))
    return out


def decode_dataset(ds: FileDataset, cfg: DataConfig | None = None) -> RawArrays:
    """Every image of `ds` decoded into arrays (the registered loaders' answer, and the in-memory
    path): checked first, then at data.image_size or the one size they all share."""
    cfg = cfg or DataConfig()
    train, test, mode, crop, *_ = check_all_files(ds, cfg)
    channels = 1 if mode == "L" else 3
    count = len(train) + len(test)
    check_memory(count * channels * crop[0] * crop[1], f"{ds.source}: {count:,} images of {crop[1]}x{crop[0]}x"
                 f"{channels}", "use fewer or smaller images, or set data.image_size (streamed from the files)")
    workers = cfg.worker_count()
    x_train, x_test = (decode_many(s.files, mode, cfg.resize, crop, workers) for s in (train, test))
    return RawArrays(ds.name, x_train, train.labels, x_test, test.labels, ds.class_names, ds.source)
