"""Issue 28: an image folder of `<class>/` folders alone (no train/ and test/) is a dataset:
split into train and test, stratified and with one fixed seed, the split recorded; given as
`--data FOLDER` or as `data: {name: imagefolder, path: FOLDER}`. A folder in neither layout is
refused in one line that names both."""

from __future__ import annotations

import numpy as np

from clitools import cli, refused
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from ownfolder import write_class_folders


def test_class_folders_are_split_stratified_and_the_same_for_every_seed(tmp_path):
    folder = tmp_path / "own"
    classes = write_class_folders(folder, classes=3, per_class=10, size=32)
    (folder / classes[0] / "extra.png").write_bytes((folder / classes[0] / "000.png").read_bytes())  # 11 images
    first = load_splits(DataConfig(name=str(folder)), seed=0)
    other = load_splits(DataConfig(name="imagefolder", path=str(folder)), seed=7)  # the recipe's way
    assert first.spec.class_names == tuple(classes) and first.spec.channels == 3
    assert first.record["split"] == {"from": "class folders", "test_fraction": 0.2, "seed": 0, "train": 25,
                                     "test": 6}
    # each class in the same proportion: round(0.2 * 11) = 2 and round(0.2 * 10) = 2 test images
    assert np.bincount(first.test_y).tolist() == [2, 2, 2]
    assert len(first.test_y) + len(first.train_y) + len(first.val_y) == 31
    # the same test files whatever the run's seed: a resume and a later run test on the same images
    assert np.array_equal(first.test_x, other.test_x) and np.array_equal(first.test_y, other.test_y)
    rows = first.record["files_fingerprint"]["rows"]
    assert sum(row[1] == "test" for row in rows) == 6  # the split, file by file, for --resume to compare


def test_train_and_test_folders_still_work_as_before(tmp_path):
    folder = tmp_path / "own"
    write_class_folders(folder / "train", classes=2, per_class=6, size=32)
    write_class_folders(folder / "test", classes=2, per_class=2, size=32)
    splits = load_splits(DataConfig(name=str(folder)), seed=0)
    assert len(splits.test_y) == 4 and "split" not in splits.record


def test_a_folder_in_neither_layout_is_refused_naming_both(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    write_class_folders(tmp_path / "tmp", classes=1, per_class=2, size=32)
    for png in (tmp_path / "tmp").rglob("*.png"):
        png.rename(loose / png.name)  # images, but no class folders
    out = tmp_path / "run"
    line = refused(cli("compress", "--data", loose, "--out", out), "images but no class folders",
                   f"{loose}/<class>/*.png", f"{loose}/train/<class>/*.png", f"{loose}/test/<class>/*.png")
    assert "unknown dataset" not in line
    assert not out.exists()  # refused before the run directory is made
    refused(cli("compress", "--data", "imagefolder", "--data-path", loose, "--out", out), "<class>/*.png")
