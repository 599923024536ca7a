"""The recipe's `data` section: which dataset (a name in edgekd.data.formats.FORMATS or a
path), how it is split, and how its images are preprocessed and fed to training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from edgekd.configtools import MAX_BATCH_SIZE, check_flag, check_number, check_path, clip, require, shown
from edgekd.data.formats import FORMATS, unknown_dataset
from edgekd.data.preprocess import check_resize

MAX_IMAGES = 10**9  # limit_train / limit_test: more than any dataset held in memory
MAX_IMAGE_SIZE = 4096  # pixels on a side of data.image_size
MAX_WORKERS = 64
DEFAULT_WORKERS = 4  # data.workers when not set: at most this many, and at most the CPUs this process may use

# mean / std presets: per channel for RGB; grey images take the mean of the three
PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
DATASET = "dataset"  # computed from the train split (on a sample when streaming)
AUGMENT_POLICIES = ("trivialaugment",)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is split, and how its images reach the model.

    name: a registered dataset format (edgekd.data.formats.FORMATS; the default is the
    embedded 'fashion-mnist-subset'), or the path of an .npz file, IDX folder, image folder
    or manifest (.csv / .jsonl); path: where the format looks (a folder or a file).

    image_size: the model's input, int or [height, width]: images are resized (shorter side
    to image_size / crop_fraction) and center-cropped for evaluation and calibration, and
    random-resized-cropped and flipped for training (when the stage's augment is on, plus
    augment_policy). None: the images are used at their own size (all alike).
    channels: 1 or 3 (grey or RGB); None: the data's own. mean / std: numbers (one, or one
    per channel), 'imagenet', or 'dataset' (computed from the train split).
    skip_bad: unreadable or truncated images (and empty class folders) are skipped and counted
    (the first files named) in the data stage's record instead of refused (exit 2) before
    training. Images smaller than image_size are no bad ones: they are resized up and counted.
    streaming: 'auto' decodes images per batch (DataLoader workers) for image files with an
    image_size or a train set above STREAM_BYTES as float32; else one in-memory tensor.
    workers: DataLoader worker processes (None: min(4, CPUs)). eval_size: at most this many
    images in eval.npz and, when streaming, in the in-memory val and calibration sets
    (None: as many as fit in EVAL_BYTES of pixels).
    labels_per_class: keep this many labels per class of the train split (chosen per seed,
    class-balanced); the other train images stay without labels. unlabeled: a folder of
    images without classes, or an .npz holding `x` only, added to the train split without
    labels. Unlabeled images teach the student through the teacher (edgekd.data.unlabeled).
    """

    name: str = "fashion-mnist-subset"
    path: Optional[str] = None
    val_fraction: float = 0.1
    calib_size: int = 512
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    image_size: Optional[Union[int, list]] = None
    crop_fraction: float = 0.875
    channels: Optional[int] = None
    mean: Union[str, float, list] = DATASET
    std: Union[str, float, list] = DATASET
    augment_policy: Optional[str] = None
    skip_bad: bool = False
    streaming: Union[bool, str] = "auto"
    workers: Optional[int] = None
    eval_size: Optional[int] = None
    labels_per_class: Optional[int] = None
    unlabeled: Optional[str] = None

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
        for key in ("limit_train", "limit_test", "eval_size"):
            value = getattr(self, key)
            check_number(value, f"data.{key}", high=MAX_IMAGES, integer=True, optional=True)
            require(value is None or value > 0, f"data.{key} must be positive")
        self.crop  # noqa: B018 - checks image_size
        check_number(self.crop_fraction, "data.crop_fraction")
        require(0.0 < self.crop_fraction <= 1.0, f"data.crop_fraction must be in (0, 1], got {shown(self.crop_fraction)}")
        check_resize(self.resize, self.channels, "data.crop_fraction")  # bench's --crop-fraction: the same check
        require(self.channels in (None, 1, 3), f"data.channels must be 1 (grey) or 3 (RGB), got {shown(self.channels)}")
        for key in ("mean", "std"):
            check_stat(getattr(self, key), f"data.{key}", positive=key == "std")
        require(self.augment_policy is None or self.augment_policy in AUGMENT_POLICIES,
                f"data.augment_policy must be one of {', '.join(AUGMENT_POLICIES)} or null, "
                f"got {shown(self.augment_policy)}")
        check_flag(self.skip_bad, "data.skip_bad")
        require(self.streaming in (True, False, "auto"),
                f"data.streaming must be true, false or 'auto', got {shown(self.streaming)}")
        check_number(self.workers, "data.workers", high=MAX_WORKERS, integer=True, optional=True)
        require(self.workers is None or self.workers >= 0, "data.workers must be 0 or more")
        check_number(self.labels_per_class, "data.labels_per_class", high=MAX_IMAGES, integer=True, optional=True)
        require(self.labels_per_class is None or self.labels_per_class >= 1,
                f"data.labels_per_class must be 1 or more, got {shown(self.labels_per_class)}")
        check_path(self.unlabeled, "data.unlabeled")

    @property
    def crop(self) -> Optional[tuple[int, int]]:
        """image_size as (height, width), or None."""
        size = self.image_size
        if size is None:
            return None
        items = size if isinstance(size, list) else [size, size]
        require(len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in items),
                f"data.image_size must be a whole number or [height, width], got {shown(size)}")
        require(all(2 <= v <= MAX_IMAGE_SIZE for v in items),
                f"data.image_size must be between 2 and {MAX_IMAGE_SIZE} pixels, got {shown(size)}")
        return int(items[0]), int(items[1])

    @property
    def resize(self) -> Optional[int]:
        """The shorter side images are resized to before the center crop (None: no resize)."""
        crop = self.crop
        return None if crop is None else resize_for(crop, self.crop_fraction)

    def worker_count(self) -> int:
        return self.workers if self.workers is not None else min(DEFAULT_WORKERS, cpu_count())


def resize_for(crop: tuple[int, int], crop_fraction: float) -> int:
    """The shorter side that a center crop of `crop` takes crop_fraction of (at least the crop)."""
    return max(max(crop), int(round(max(crop) / crop_fraction)))


def cpu_count() -> int:
    """The CPUs this process may use: affinity and cgroup CPU quota (edgekd.train.threads, no torch)."""
    from edgekd.train.threads import cpu_limit

    return cpu_limit()


def check_stat(value, key: str, *, positive: bool) -> None:
    """data.mean / data.std: a preset name, a number, or a list of 1 or 3 numbers."""
    if isinstance(value, str):
        names = [DATASET, *PRESETS]
        require(value in names, f"{key} must be numbers or one of {', '.join(names)}, got {shown(value)}")
        return
    values = value if isinstance(value, list) else [value]
    require(len(values) in (1, 3), f"{key} must be one number or one per channel (1 or 3), got {shown(value)}")
    for v in values:
        check_number(v, key)
        require(v > 0 if positive else 0.0 <= v <= 1.0,
                f"{key} values must be {'positive' if positive else 'in [0, 1] (pixels scaled to 0..1)'}, "
                f"got {shown(value)}")


def resolve_stat(value, which: int, channels: int, computed: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """The per-channel values of data.mean (which=0) or data.std (which=1): the preset's, the
    given numbers, or `computed` for 'dataset' (None: compute them)."""
    if value == DATASET:
        return computed
    if isinstance(value, str):
        rgb = PRESETS[value][which]
        return rgb if channels == 3 else (sum(rgb) / 3,) * channels
    values = [float(v) for v in (value if isinstance(value, list) else [value])]
    if len(values) == 1:
        return tuple(values * channels)
    require(len(values) == channels, f"data.{('mean', 'std')[which]} has {len(values)} values but the images have "
                                     f"{channels} channel(s)")
    return tuple(values)


def is_existing_path(name) -> bool:
    """Whether data.name names an existing file or folder (which load_splits then reads by its type)."""
    try:
        return isinstance(name, str) and bool(name) and Path(name).expanduser().exists()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte
        return False
