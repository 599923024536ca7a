"""How a dataset is split: the Splits it becomes (with its DataSpec, and a Stream when it is fed
batch by batch), arrays split into train / val / test / calibration (array_splits), and the
choices both paths share (streaming or not, how many eval images, the mean and std).

numpy only, like edgekd.data.splits, which loads a dataset and hands it here (arrays) or to
edgekd.data.image_file_splits (image files, which builds on this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekd.data.base import RawArrays
from edgekd.data.config import DATASET, DataConfig, resolve_stat
from edgekd.data.fitting import fit_arrays
from edgekd.data.stratify import stratified_split
from edgekd.data.unlabeled import UNLABELED, choose_labeled, image_counts, load_unlabeled

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


def array_splits(raw: RawArrays, cfg: DataConfig, seed: int, *, fitted: bool = False, record=None) -> Splits:
    """Split decoded arrays: channels converted and images fitted to data.image_size (unless
    `fitted`: done already), then train / val / calib; streamed (uint8 kept, normalized per
    batch) when the float train set would be large (choose_streaming)."""
    rng = np.random.default_rng(seed)
    train_x, train_y = limit_images(raw.train_x, raw.train_y, cfg.limit_train, rng)
    # A fixed seed here, so runs with different seeds report on the same test images.
    test_x, test_y = limit_images(raw.test_x, raw.test_y, cfg.limit_test, np.random.default_rng(0))
    record = dict(record or {})
    if not fitted:
        crop = cfg.crop
        if crop is not None and (train_x.shape[2] < crop[0] or train_x.shape[3] < crop[1]):
            record["upscaled_images"] = len(train_x) + len(test_x)  # smaller than data.image_size: resized up
        train_x, test_x = (fit_arrays(x, cfg, raw.source) for x in (train_x, test_x))
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


def limit_images(x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator):
    """Keep `limit` random images (classes stay roughly balanced); None keeps all."""
    if limit is None or limit >= len(x):
        return x, y
    keep = np.sort(rng.permutation(len(x))[:limit])
    return x[keep], y[keep]
