"""Splits of image-file datasets (an image folder, a manifest).

Every file is opened and decoded once before training (data/image_files.py: `scan`), so a bad
image is refused (exit 2, naming it) or, with data.skip_bad, skipped and counted, before the
run directory exists. Then:

- small datasets without a data.image_size are decoded into arrays and follow the arrays'
  path (data/splits.py: one float tensor in memory, today's fast path);
- otherwise the train and val splits stay file lists, decoded per batch by DataLoader
  workers (data/stream.py), and only bounded sets are decoded up front at the model's input
  size: val and calibration images for export parity and int8 (data.eval_size), the test
  images of eval.npz, and a sample for the mean and std ('dataset').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.base import RawArrays, check_memory
from edgekd.data.class_folders import list_any_image_folder
from edgekd.data.config import DATASET, DataConfig
from edgekd.data.fingerprint import files_part
from edgekd.data.fitting import check_all_files, decode_many
from edgekd.data.formats import FORMATS, FileLister
from edgekd.data.formats.idx import IDX_FILES, find_idx_file
from edgekd.data.formats.manifest import is_manifest, list_manifest
from edgekd.data.image_files import FileDataset, FileSplit
from edgekd.data.memory import shared_copy
from edgekd.data.splitting import (
    Splits,
    Stream,
    array_splits,
    channel_mean_std,
    choose_streaming,
    eval_cap,
    eval_subset,
    make_spec,
    stratified_split,
)
from edgekd.errors import DataError
from edgekd.io.regular import not_regular, what_it_is

STATS_SAMPLE = 1000  # train images the mean and std of a streamed dataset are computed from
FILES_FINGERPRINT = "files_fingerprint"  # the key of Splits.record that the data stage takes out


def list_files(cfg: DataConfig) -> FileDataset | None:
    """The file list of data.name when it is a file format (registered with a FileLister, as
    imagefolder and manifest are, or a path to an image folder or manifest), else None (an
    array format)."""
    if cfg.name in FORMATS:
        entry = FORMATS.get(cfg.name)
        return listed(cfg.name, entry, cfg.path, cfg.skip_bad) if isinstance(entry, FileLister) else None
    return list_path(Path(cfg.name).expanduser(), skip_empty=cfg.skip_bad)


def listed(name: str, lister: FileLister, path: str | None, skip_bad: bool) -> FileDataset:
    """What the lister of format `name` returns, checked to be a FileDataset."""
    files = lister.list(name, path, skip_bad)
    if not isinstance(files, FileDataset):
        raise DataError(f"dataset format '{name}' returned a {type(files).__name__}; "
                        "its lister must return edgekd.data.formats.FileDataset")
    return files


def list_path(path: Path, skip_empty: bool = False) -> FileDataset | None:
    """A dataset path that is a manifest file or an image folder (not an IDX folder), listed: a
    folder in neither image folder layout is refused naming both. A path to a FIFO or device
    is refused here: reading it would block or never end."""
    kind = not_regular(path)
    if kind not in (None, "missing", "a folder"):
        raise DataError(f"data path {path} {what_it_is(kind)}; pass an .npz or .csv/.jsonl file, or an image or "
                        "IDX folder")
    if path.is_file() and is_manifest(path):
        return list_manifest(str(path))
    if path.is_dir() and not find_idx_file(path, IDX_FILES["train_x"]):
        return list_any_image_folder(str(path), skip_empty=skip_empty)
    return None


def file_splits(ds: FileDataset, cfg: DataConfig, seed: int) -> Splits:
    """Split a file dataset: decoded into arrays when small and without image_size, else streamed.
    The record holds the fingerprint of the whole listing under FILES_FINGERPRINT, for the data
    stage to keep (edgekd.data.fingerprint); it is taken from this list, not from a second walk."""
    listing = files_part(ds)
    rng = np.random.default_rng(seed)
    ds = ds._replace(train=_limit(ds.train, cfg.limit_train, rng),
                     test=_limit(ds.test, cfg.limit_test, np.random.default_rng(0)))
    train, test, mode, crop, skipped, upscaled, skipped_files = check_all_files(ds, cfg)
    channels = 1 if mode == "L" else 3
    record = {"skipped": skipped} if skipped else {}
    if skipped_files:
        record["skipped_files"] = skipped_files  # the first ones, named in the data stage's log
    if ds.split:
        record["split"] = ds.split
    if upscaled:
        record["upscaled_images"] = upscaled  # smaller than data.image_size: resized up
    record[FILES_FINGERPRINT] = listing
    if not choose_streaming(cfg, len(train), channels * crop[0] * crop[1], files=True):
        workers = cfg.worker_count()
        count = len(train) + len(test)
        check_memory(count * channels * crop[0] * crop[1], f"{ds.source}: {count:,} images of {crop[1]}x{crop[0]}x"
                     f"{channels}", "set data.streaming: true (decoded per batch from the files)")
        raw = RawArrays(ds.name, decode_many(train.files, mode, cfg.resize, crop, workers), train.labels,
                        decode_many(test.files, mode, cfg.resize, crop, workers), test.labels, ds.class_names,
                        ds.source)
        return array_splits(raw, cfg, seed, fitted=True, record=record)
    if cfg.labels_per_class is not None or cfg.unlabeled is not None:
        raise DataError("data.labels_per_class and data.unlabeled work on images held in memory, and these image "
                        "files would be streamed; set data.streaming: false to decode them up front")
    return _streamed(ds, cfg, rng, train, test, mode, crop, record)


def _streamed(ds, cfg: DataConfig, rng, train: FileSplit, test: FileSplit, mode: str, crop: tuple,
              record: dict) -> Splits:
    workers = cfg.worker_count()
    channels = 1 if mode == "L" else 3
    cap = eval_cap(cfg, channels * crop[0] * crop[1])
    train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, rng)
    needs_stats = DATASET in (cfg.mean, cfg.std)
    calib_n = min(cfg.calib_size, cap, len(train_idx))
    sample_n = min(len(train_idx), max(calib_n, STATS_SAMPLE if needs_stats else 0))
    sample_idx = rng.choice(train_idx, size=sample_n, replace=False)
    sample = decode_many(train.take(sample_idx).files, mode, cfg.resize, crop, workers, shared=True)
    calib_x, calib_y = shared_copy(sample[:calib_n]), train.labels[sample_idx[:calib_n]]
    spec = make_spec(ds, cfg, channels, crop[0], crop[1], lambda sample=sample: channel_mean_std(sample))
    del sample  # make_spec has called the lambda (or not needed it): the decoded sample goes
    val_keep = val_idx[eval_subset(len(val_idx), cap)]
    test_keep = eval_subset(len(test), cap)
    val, test_part = train.take(val_keep), test.take(test_keep)
    record.update(streaming="files", workers=workers, val_in_memory=len(val_keep),
                  mean_std_from=sample_n if needs_stats else None)
    if len(test_keep) < len(test):
        record["test_capped_from"] = len(test)
    stream = Stream("files", train.take(train_idx), train.take(val_idx), mode=mode, resize=cfg.resize, crop=crop,
                    policy=cfg.augment_policy, workers=workers)
    return Splits(
        spec=spec,
        train_x=None,
        train_y=train.labels[train_idx],
        val_x=decode_many(val.files, mode, cfg.resize, crop, workers, shared=True),
        val_y=val.labels,
        test_x=decode_many(test_part.files, mode, cfg.resize, crop, workers, shared=True),
        test_y=test_part.labels,
        calib_x=calib_x,
        calib_y=calib_y,
        stream=stream,
        record=record,
    )


def _limit(split: FileSplit, limit: int | None, rng) -> FileSplit:
    """`limit` random files of the split (in their order); None keeps all."""
    if limit is None or limit >= len(split):
        return split
    return split.take(np.sort(rng.permutation(len(split))[:limit]))
