"""Datasets as uint8 NCHW numpy arrays, split into train / val / test / calibration.

numpy only: no torch here, so evaluating an ONNX model needs nothing heavier. PIL is
imported only where image files are read (data/files.py).

    splits = load_splits(DataConfig(name="fashion-mnist-subset"), seed=0)
    splits.train_x.shape  # (9000, 1, 28, 28), uint8

Small datasets are held as arrays and trained from one float tensor; large ones and image
files with a data.image_size are streamed (`Splits.stream`, data/filesplits.py, data/stream.py).

A dataset is named by its format (edgekd.data.formats.FORMATS, which users extend) or
by a path. Every missing or malformed input is a DataError whose one-line message says
what was expected, where it looked and how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.data.base import MAX_CHANNELS, MAX_CLASS_NAME, MAX_CLASSES, RawArrays, check_image_size
from edgekd.data.config import DATASET, DataConfig, resolve_stat
from edgekd.data.formats import FORMATS, unknown_dataset
from edgekd.data.formats.idx import IDX_FILES, find_idx_file, read_idx_folder
from edgekd.data.formats.npz import load_npz
from edgekd.data.preprocess import convert_channels, fit_array
from edgekd.errors import DataError
from edgekd.io.artifacts import atomic_path

STREAM_BYTES = 1 << 30  # data.streaming auto: a train set above this as float32 is streamed
EVAL_BYTES = 64 << 20  # data.eval_size not set: eval.npz (and streamed val, calib) hold this many bytes of pixels


@dataclass(frozen=True)
class DataSpec:
    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of train images scaled to [0, 1]
    std: tuple[float, ...]
    source: str  # where the data was read from
    resize: int | None = None  # the shorter side before the center crop to (height, width); None: no resize


@dataclass(frozen=True, eq=False)
class Stream:
    """Train and val splits fed batch by batch (edgekd.data.stream) instead of as one float
    tensor: `kind` 'files' (FileSplits, decoded by DataLoader workers) or 'arrays' ((x uint8,
    y) pairs normalized per batch). `mode`, `resize`, `crop` and `policy` say how files are
    decoded and augmented; `workers` how many processes decode them."""

    kind: str
    train: object
    val: object
    mode: str = "L"
    resize: int | None = None
    crop: tuple | None = None
    policy: str | None = None
    workers: int = 0


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class Splits:
    """Images are uint8 NCHW, labels int64. calib is drawn from train, never from val or test.

    With `stream` set, training reads the train and val splits from it; train_x is then None
    (files) and val_x / calib_x / test_x hold at most data.eval_size images, decoded at the
    model's input size. `record`: what the data stage records (skipped files, capped sets)."""

    spec: DataSpec
    train_x: np.ndarray | None
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    stream: Stream | None = None
    record: dict = field(default_factory=dict)


def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """Load cfg's dataset and split it; the same seed always gives the same splits."""
    from edgekd.data.filesplits import file_splits, list_files

    files = list_files(cfg)
    if files is not None:
        return file_splits(files, cfg, seed)
    return array_splits(_load(cfg.name, cfg.path), cfg, seed)


def array_splits(raw: RawArrays, cfg: DataConfig, seed: int, *, fitted: bool = False, record=None) -> Splits:
    """Split decoded arrays: channels converted and images fitted to data.image_size (unless
    `fitted`: done already), then train / val / calib; streamed (uint8 kept, normalized per
    batch) when the float train set would be large (choose_streaming)."""
    rng = np.random.default_rng(seed)
    train_x, train_y = limit_images(raw.train_x, raw.train_y, cfg.limit_train, rng)
    # A fixed seed here, so runs with different seeds report on the same test images.
    test_x, test_y = limit_images(raw.test_x, raw.test_y, cfg.limit_test, np.random.default_rng(0))
    if not fitted:
        train_x, test_x = (fit_arrays(x, cfg, raw.source) for x in (train_x, test_x))
    record = dict(record or {})
    keep = eval_subset(len(test_x), eval_cap(cfg, test_x[0].nbytes))
    if len(keep) < len(test_x):
        record["test_capped_from"] = len(test_x)
        test_x, test_y = test_x[keep], test_y[keep]

    train_idx, val_idx = stratified_split(train_y, cfg.val_fraction, rng)
    calib_idx = rng.choice(train_idx, size=min(cfg.calib_size, len(train_idx)), replace=False)

    part_x = train_x[train_idx]
    _, channels, height, width = train_x.shape
    spec = make_spec(raw, cfg, channels, height, width, lambda: channel_mean_std(part_x))
    train_labels = train_y.copy()  # label-scarce: the train split's removed labels become UNLABELED
    part_x, part_y = label_scarce(cfg, seed, raw.class_names, part_x, train_labels, train_idx, record)
    stream = None
    if choose_streaming(cfg, len(part_x) + len(val_idx), channels * height * width, files=False):
        stream = Stream("arrays", (part_x, part_y), (train_x[val_idx], train_y[val_idx]))
        cap = eval_cap(cfg, train_x[0].nbytes)
        val_idx = val_idx[eval_subset(len(val_idx), cap)]
        calib_idx = calib_idx[:cap]
    return Splits(
        spec=spec,
        train_x=part_x,
        train_y=part_y,
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        calib_x=train_x[calib_idx],
        calib_y=train_labels[calib_idx],
        stream=stream,
        record=record,
    )


def label_scarce(cfg: DataConfig, seed: int, class_names: tuple, part_x: np.ndarray, train_labels: np.ndarray,
                 train_idx: np.ndarray, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """The train split's images and labels after data.labels_per_class (labels removed, in
    `train_labels` too) and data.unlabeled (images added without labels); counts in `record`."""
    if cfg.labels_per_class is None and cfg.unlabeled is None:
        return part_x, train_labels[train_idx]
    from edgekd.data.unlabeled import (
        UNLABELED,
        choose_labeled,
        image_counts,
        load_unlabeled,
    )

    if cfg.labels_per_class is not None:
        keep = choose_labeled(train_labels[train_idx], cfg.labels_per_class, seed, class_names)
        train_labels[train_idx[~keep]] = UNLABELED
    part_y = train_labels[train_idx]
    if cfg.unlabeled is not None:
        extra, skipped = load_unlabeled(cfg.unlabeled, cfg, part_x.shape[1], part_x.shape[2:])
        part_x = np.concatenate([part_x, extra])
        part_y = np.concatenate([part_y, np.full(len(extra), UNLABELED, dtype=np.int64)])
        record.update(unlabeled_from_path=len(extra), **({"unlabeled_skipped": skipped} if skipped else {}))
    record.update(image_counts(part_y))
    return part_x, part_y


def make_spec(raw, cfg: DataConfig, channels: int, height: int, width: int, computed) -> DataSpec:
    """The DataSpec, with data.mean / data.std resolved (`computed()`: the dataset's own)."""
    stats = computed() if DATASET in (cfg.mean, cfg.std) else (None, None)
    mean, std = (resolve_stat(getattr(cfg, key), i, channels, stats[i]) for i, key in enumerate(("mean", "std")))
    return DataSpec(name=raw.name, channels=channels, height=height, width=width, num_classes=len(raw.class_names),
                    class_names=raw.class_names, mean=tuple(mean), std=tuple(std), source=raw.source,
                    resize=cfg.resize if cfg.crop is not None else None)


def choose_streaming(cfg: DataConfig, images: int, pixels: int, *, files: bool) -> bool:
    """data.streaming, or for 'auto': image files with an image_size, or a train set whose float32
    tensor would take more than STREAM_BYTES."""
    if cfg.streaming != "auto":
        return bool(cfg.streaming)
    return (files and cfg.crop is not None) or images * pixels * 4 > STREAM_BYTES


def eval_cap(cfg: DataConfig, image_bytes: int) -> int:
    """How many images eval.npz (and, when streaming, the in-memory val and calib sets) hold at most."""
    return cfg.eval_size if cfg.eval_size is not None else max(1, EVAL_BYTES // max(1, image_bytes))


def eval_subset(n: int, cap: int) -> np.ndarray:
    """Sorted positions of at most `cap` of n images, the same for every seed."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:cap])


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
    height, width = x.shape[2:]
    if height < crop[0] or width < crop[1]:
        raise DataError(f"{source}: images are {width}x{height}, smaller than the crop {crop[1]}x{crop[0]} "
                        "(data.image_size); use a smaller data.image_size")
    return fit_array(x, cfg.resize, crop)


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


def channel_mean_std(x_uint8: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NCHW images scaled to [0, 1].

    Computed from a 256-bin histogram per channel: exact, and no float copy of the images.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x_uint8.shape[1]):
        counts = np.bincount(x_uint8[:, c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * values**2).sum() / total) - mean**2
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5)  # max: rounding can make a zero variance slightly negative
    return tuple(means), tuple(stds)


def _load(name: str, path: str | None) -> RawArrays:
    """The registered format `name`, else `name` read as a path; checked before it is returned."""
    if name in FORMATS:
        raw = FORMATS.get(name)(name, path)
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
    from edgekd.data.filesplits import decode_dataset, list_path

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


def limit_images(x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator):
    """Keep `limit` random images (classes stay roughly balanced); None keeps all."""
    if limit is None or limit >= len(x):
        return x, y
    keep = np.sort(rng.permutation(len(x))[:limit])
    return x[keep], y[keep]


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
