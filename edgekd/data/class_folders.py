"""An image folder in either layout users have: FOLDER/<class>/* (one folder per class, split
here into train and test) or FOLDER/train/<class>/* with FOLDER/test/<class>/* (or val/),
listed by edgekd.data.image_files.list_imagefolder. Which one is decided by what the folder holds.

The split of class folders is stratified (each class split in the same proportion) and drawn
with a fixed seed from the sorted file list, so a resume and every later run (whatever its
seed, as for data.limit_test) test on the same files. It is recorded in FileDataset.split (the
data stage's record) and, file by file, in the data fingerprint that --resume compares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.image_files import IMAGE_SUFFIXES, FileDataset, file_split, list_classes, list_imagefolder
from edgekd.data.stratify import stratified_split
from edgekd.errors import DataError

TEST_FRACTION = 0.2  # of each class's images, held out as the test split
SPLIT_SEED = 0  # one split for every run seed: runs with different seeds report on the same test files
SPLIT_FOLDERS = ("train", "test", "val")


def layouts(root: Path) -> str:
    """The two layouts an image folder may have, spelled for `root`."""
    return (f"{root}/<class>/*.png (one folder per class; {TEST_FRACTION:.0%} of each held out for test) or "
            f"{root}/train/<class>/*.png with {root}/test/<class>/*.png")


def list_any_image_folder(path: str, skip_empty: bool = False) -> FileDataset:
    """The image folder at `path` listed in the layout it has (see the module docstring); a
    DataError naming both layouts when it has neither."""
    root = Path(path).expanduser()
    if any((root / name).is_dir() for name in SPLIT_FOLDERS):
        return list_imagefolder(str(root), skip_empty=skip_empty)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; expected {layouts(root)}")
    if not any(entry.is_dir() for entry in root.iterdir()):
        loose = any(entry.suffix.lower() in IMAGE_SUFFIXES for entry in root.iterdir())
        found = "images but no class folders" if loose else "no class folders"
        raise DataError(f"{root} holds {found}; expected {layouts(root)}")
    return split_class_folders(root, skip_empty=skip_empty)


def split_class_folders(root: Path, skip_empty: bool = False) -> FileDataset:
    """root/<class>/<image> split into train and test, TEST_FRACTION of each class for test."""
    layout = layouts(root)
    found, class_names, empty = list_classes(root, layout, every_class=True, skip_empty=skip_empty)
    if len(found) < 2:
        raise DataError(f"{root} holds {len(found)} image; at least 2 are needed to hold out a test split "
                        f"(expected {layout})")
    listed = file_split(found)
    train_idx, test_idx = stratified_split(listed.labels, TEST_FRACTION, np.random.default_rng(SPLIT_SEED))
    train, test = listed.take(np.sort(train_idx)), listed.take(np.sort(test_idx))  # in listing order
    split = {"from": "class folders", "test_fraction": TEST_FRACTION, "seed": SPLIT_SEED, "train": len(train),
             "test": len(test)}
    skipped = {"empty_class_folders": len(empty)} if empty else {}
    return FileDataset("imagefolder", train, test, class_names, str(root), skipped, split)
