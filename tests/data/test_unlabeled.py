"""Label-scarce data (edgekd.data.unlabeled): data.labels_per_class keeps N labels per class,
class-balanced and the same for a seed (other seeds draw others); data.unlabeled adds images
without classes from an .npz holding x or a folder of images; every bad value is a one-line
DataError or ConfigError (exit 2) raised while the splits are loaded, before any training."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.data.unlabeled import UNLABELED, choose_labeled, image_counts
from edgekd.errors import BadInput, ConfigError, DataError

CLASS_NAMES = ("a", "b", "c")


def dataset(path, n: int = 90, channels: int = 1, size: int = 8):
    """An .npz dataset of n train and 30 test images, 3 classes in turn."""
    rng = np.random.default_rng(0)
    shape = (channels, size, size)
    y = np.arange(n) % 3
    np.savez(path, train_x=rng.integers(0, 255, (n, *shape), dtype=np.uint8), train_y=y,
             test_x=rng.integers(0, 255, (30, *shape), dtype=np.uint8), test_y=np.arange(30) % 3)
    return str(path)


def test_choose_labeled_is_class_balanced_and_deterministic_per_seed():
    labels = np.repeat(np.arange(3), [40, 25, 31])
    np.random.default_rng(1).shuffle(labels)
    keep = choose_labeled(labels, 5, seed=0, class_names=CLASS_NAMES)
    assert keep.sum() == 15
    assert np.bincount(labels[keep], minlength=3).tolist() == [5, 5, 5]
    assert np.array_equal(keep, choose_labeled(labels, 5, seed=0, class_names=CLASS_NAMES))
    others = [choose_labeled(labels, 5, seed=s, class_names=CLASS_NAMES) for s in (1, 2)]
    assert not any(np.array_equal(keep, other) for other in others)


def test_labels_per_class_larger_than_the_smallest_class_names_it():
    labels = np.repeat(np.arange(3), [10, 4, 10])
    with pytest.raises(DataError, match=r"labels_per_class 5 .* class 'b' \(4 images"):
        choose_labeled(labels, 5, seed=0, class_names=CLASS_NAMES)


def test_splits_keep_n_labels_per_class_and_leave_val_and_test_labeled(tmp_path):
    cfg = DataConfig(name=dataset(tmp_path / "d.npz"), val_fraction=0.2, labels_per_class=4)
    splits = load_splits(cfg, seed=3)
    labeled = splits.train_y[splits.train_y != UNLABELED]
    assert np.bincount(labeled).tolist() == [4, 4, 4]
    assert image_counts(splits.train_y) == {"labeled": 12, "unlabeled": len(splits.train_y) - 12}
    assert splits.record["labeled"] == 12 and splits.record["unlabeled"] == len(splits.train_y) - 12
    assert (splits.val_y >= 0).all() and (splits.test_y >= 0).all()
    full = load_splits(DataConfig(name=cfg.name, val_fraction=0.2), seed=3)
    assert np.array_equal(full.train_x, splits.train_x) and np.array_equal(full.val_y, splits.val_y)
    assert np.array_equal(full.calib_x, splits.calib_x)  # the split and calibration draws are unchanged
    again = load_splits(cfg, seed=3)
    assert np.array_equal(again.train_y, splits.train_y)


def test_unlabeled_npz_images_join_the_train_split_without_labels(tmp_path):
    extra = np.random.default_rng(1).integers(0, 255, (7, 8, 8), dtype=np.uint8)  # (N, H, W) grey
    np.savez(tmp_path / "u.npz", x=extra)
    cfg = DataConfig(name=dataset(tmp_path / "d.npz"), unlabeled=str(tmp_path / "u.npz"))
    splits = load_splits(cfg, seed=0)
    assert splits.train_x.shape[1:] == (1, 8, 8)
    assert (splits.train_y[-7:] == UNLABELED).all() and (splits.train_y[:-7] >= 0).all()
    assert np.array_equal(splits.train_x[-7:, 0], extra)
    assert splits.record["unlabeled"] == 7 and splits.record["unlabeled_from_path"] == 7


def test_unlabeled_folder_is_read_in_the_dataset_s_channels_and_size(tmp_path):
    from PIL import Image

    folder = tmp_path / "unlabeled" / "deeper"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), "L").save(folder / f"{i}.png")
    cfg = DataConfig(name=dataset(tmp_path / "d.npz"), unlabeled=str(tmp_path / "unlabeled"), labels_per_class=2)
    splits = load_splits(cfg, seed=0)
    assert image_counts(splits.train_y)["labeled"] == 6
    assert splits.train_x[-1, 0, 0, 0] == 80 and splits.record["unlabeled_from_path"] == 3


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty folder", "has no images"),
    ("npz without x", "expected x"),
    ("rgb for grey", "3 channel(s), the dataset's have 1; set data.channels: 1"),
    ("other size", "images are 6x6, the dataset's are 8x8"),
])
def test_bad_unlabeled_inputs_are_one_line_data_errors(tmp_path, case, message):
    path = tmp_path / "u.npz"
    if case == "empty folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "npz without x":
        np.savez(path, images=np.zeros((2, 8, 8), np.uint8))
    elif case == "rgb for grey":
        np.savez(path, x=np.zeros((2, 8, 8, 3), np.uint8))
    elif case == "other size":
        np.savez(path, x=np.zeros((2, 6, 6), np.uint8))
    cfg = DataConfig(name=dataset(tmp_path / "d.npz"), unlabeled=str(path))
    with pytest.raises(DataError) as caught:
        load_splits(cfg, seed=0)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "ten"])
def test_labels_per_class_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(ConfigError, match="labels_per_class"):
        DataConfig(labels_per_class=value)


def test_streamed_image_files_refuse_label_scarcity(image_folder):
    root = image_folder("folder")
    cfg = DataConfig(name=str(root), image_size=16, labels_per_class=1, workers=0)
    with pytest.raises(BadInput, match="data.streaming: false"):
        load_splits(cfg, seed=0)
    splits = load_splits(DataConfig(name=str(root), image_size=16, labels_per_class=1, workers=0,
                                    streaming=False), seed=0)
    assert image_counts(splits.train_y)["labeled"] == 3
