"""Label-scarce data: images without labels in the train split, for distillation.

Two sources, which may be combined:

- `data.labels_per_class: N` keeps N labels per class of the train split (after val was held
  out), chosen per seed and class-balanced (`choose_labeled`); the other train images stay,
  with their labels removed;
- `data.unlabeled: PATH` adds images without classes: a folder of image files (searched
  recursively) or an .npz holding `x` only, read with the dataset loaders' checks and brought
  to the dataset's channels and size (`load_unlabeled`).

An unlabeled image carries the label UNLABELED (-1) in `Splits.train_y`. Training stages see
it like this: the teacher learns from the labeled images only; distillation (and pruning's and
QAT's KD fine-tuning) from all of them, the cross-entropy term skipping the unlabeled ones
(edgekd.train.labels). Val, test and the calibration labels are never removed.

numpy and PIL only (no torch), like the rest of edgekd.data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.base import check_memory
from edgekd.errors import DataError, joined_lines

UNLABELED = -1  # the label of an image without one
LABELS_STREAM = 7  # the labeled images are drawn from a stream of their own: the split's draws stay as without
_UNLABELED_NPZ = "x (uint8 images, (N,H,W), (N,H,W,C) or (N,C,H,W))"


def image_counts(labels) -> dict:
    """{"labeled": n, "unlabeled": m} of a label array (numpy or torch)."""
    labeled = int((labels >= 0).sum())
    return {"labeled": labeled, "unlabeled": len(labels) - labeled}


def choose_labeled(labels: np.ndarray, per_class: int, seed: int, class_names: tuple) -> np.ndarray:
    """A boolean mask keeping `per_class` labels of each class, drawn at random per seed (the
    same seed, the same images); a DataError when a class has fewer train images than that."""
    counts = np.bincount(labels, minlength=len(class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < per_class:
        raise DataError(f"data.labels_per_class {per_class} is more than the train split holds of class "
                        f"'{class_names[smallest]}' ({int(counts[smallest])} images after the validation split); "
                        f"use at most {int(counts[smallest])}")
    rng = np.random.default_rng([seed, LABELS_STREAM])
    keep = np.zeros(len(labels), dtype=bool)
    for label in range(len(class_names)):
        members = np.flatnonzero(labels == label)
        keep[rng.choice(members, size=per_class, replace=False)] = True
    return keep


def load_unlabeled(path: str, cfg, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """The images of data.unlabeled as uint8 (N, channels, *size), and {reason: count} of the
    bad files skipped (data.skip_bad). Images of other channels are converted only when
    data.channels is set (as for the dataset); their size must be the dataset's, or they are
    resized and cropped to data.image_size."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.unlabeled '{path}' does not exist; give a folder of images or an .npz holding "
                        f"{_UNLABELED_NPZ}")
    if root.is_dir():
        return _from_folder(root, cfg, channels, size)
    if root.is_file() and root.suffix.lower() == ".npz":
        return _from_npz(root, cfg, channels, size), {}
    raise DataError(f"data.unlabeled '{path}' is neither a folder of images nor an .npz file")


def _from_npz(file: Path, cfg, channels: int, size: tuple[int, int]) -> np.ndarray:
    from edgekd.data.fitting import fit_arrays
    from edgekd.data.formats.npz import (
        array_names,
        check_npz_magic,
        npz_member,
        to_nchw,
    )

    try:
        check_npz_magic(file, _UNLABELED_NPZ)
        with np.load(file, allow_pickle=False) as data:
            if "x" not in data.files:
                raise DataError(f"data.unlabeled {file} has arrays {array_names(data.files)}; expected "
                                f"{_UNLABELED_NPZ}")
            x = npz_member(data, "x", file)
    except DataError:
        raise
    except Exception as exc:  # zip and format errors all mean "not a plain .npz"
        raise DataError(f"cannot read data.unlabeled {file} as .npz ({joined_lines(exc)}); expected np.savez "
                        f"output with {_UNLABELED_NPZ}") from exc
    if x.dtype != np.uint8:
        raise DataError(f"data.unlabeled {file}: x must be uint8 images (0..255), got {x.dtype}")
    if x.ndim not in (3, 4) or len(x) == 0:
        raise DataError(f"data.unlabeled {file}: x holds no images (shape {x.shape}); expected {_UNLABELED_NPZ}")
    x = to_nchw(x, "x", file)
    _check_channels(x.shape[1], channels, cfg, f"data.unlabeled {file}")
    x = fit_arrays(x, cfg, f"data.unlabeled {file}")
    _check_size(x.shape[2:], size, f"data.unlabeled {file}")
    return x


def _from_folder(root: Path, cfg, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    from edgekd.data.fitting import decode_many
    from edgekd.data.image_files import (
        IMAGE_SUFFIXES,
        MAX_FILES,
        FileSplit,
        dataset_mode,
        refuse_or_skip,
        scan,
    )

    files = []
    for file in sorted(root.rglob("*")):
        if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():  # regular files: a FIFO would block
            files.append(str(file))
            if len(files) > MAX_FILES:
                raise DataError(f"data.unlabeled {root} holds more than {MAX_FILES:,} images; use fewer")
    if not files:
        raise DataError(f"data.unlabeled {root} has no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of "
                        "images or an .npz holding x")
    workers = max(1, cfg.worker_count())
    found = scan(files, crop=cfg.crop, workers=workers)
    kept, skipped = refuse_or_skip(found, FileSplit(files, np.full(len(files), UNLABELED)), cfg.skip_bad, "unlabeled")
    if not len(kept):
        raise DataError(f"data.unlabeled {root}: every image is bad ({skipped}); check the folder")
    _check_channels(1 if dataset_mode(found.modes, None) == "L" else 3, channels, cfg, f"data.unlabeled {root}")
    if cfg.crop is None:
        sizes = found.sizes
        differ = np.flatnonzero((sizes[:, 1] != size[0]) | (sizes[:, 0] != size[1]))
        if len(differ):
            w, h = sizes[differ[0]]
            raise DataError(f"data.unlabeled {files[found.good[differ[0]]]} is {w}x{h}, the dataset's images are "
                            f"{size[1]}x{size[0]}; resize them, or set data.image_size to resize both")
    check_memory(len(kept) * channels * size[0] * size[1], f"data.unlabeled {root}: {len(kept):,} images",
                 "use fewer or smaller images")
    return decode_many(kept.files, "L" if channels == 1 else "RGB", cfg.resize, size, workers), skipped


def _check_channels(found: int, channels: int, cfg, where: str) -> None:
    """Unlabeled images of other channels than the dataset's are converted only on request."""
    if found != channels and cfg.channels is None:
        raise DataError(f"{where}: images have {found} channel(s), the dataset's have {channels}; set "
                        f"data.channels: {channels} to convert them")


def _check_size(found, size: tuple[int, int], where: str) -> None:
    if tuple(found) != tuple(size):
        raise DataError(f"{where}: images are {found[1]}x{found[0]}, the dataset's are {size[1]}x{size[0]}; "
                        "resize them, or set data.image_size to resize both")
