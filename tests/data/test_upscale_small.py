"""Issue 28: images smaller than data.image_size are resized up, as torchvision's Resize does,
and counted in the data record (`upscaled_images`), not refused as "smaller than the crop"
(nor all skipped as bad with data.skip_bad). A file that is no image is still refused."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.errors import DataError
from ownfolder import write_class_folders


@pytest.fixture
def small_folder(tmp_path):
    folder = tmp_path / "own"
    write_class_folders(folder / "train", classes=2, per_class=8, size=24)
    write_class_folders(folder / "test", classes=2, per_class=3, size=24)
    return folder


@pytest.mark.parametrize("skip_bad", [False, True])
def test_images_smaller_than_image_size_are_resized_up_and_counted(small_folder, skip_bad):
    splits = load_splits(DataConfig(name=str(small_folder), image_size=48, skip_bad=skip_bad, workers=0), seed=0)
    assert splits.spec.height == splits.spec.width == 48 and splits.test_x.shape[2:] == (48, 48)
    assert splits.record["upscaled_images"] == 22  # all 16 train and 6 test images
    assert "skipped" not in splits.record  # none is bad
    assert len(splits.test_y) == 6 and splits.test_x.std() > 0  # real pixels, not blank


def test_small_arrays_are_resized_up_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(path, train_x=rng.integers(0, 256, (20, 1, 12, 12), dtype=np.uint8), train_y=np.arange(20) % 2,
             test_x=rng.integers(0, 256, (6, 1, 12, 12), dtype=np.uint8), test_y=np.arange(6) % 2,
             class_names=np.array(["a", "b"]))
    splits = load_splits(DataConfig(name=str(path), image_size=16), seed=0)
    assert splits.test_x.shape == (6, 1, 16, 16)
    assert splits.record["upscaled_images"] == 26


def test_a_file_that_is_no_image_is_still_refused(small_folder):
    bad = next((small_folder / "train").iterdir()) / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        load_splits(DataConfig(name=str(small_folder), image_size=48, workers=0), seed=0)
