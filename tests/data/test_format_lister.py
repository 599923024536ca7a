"""A user's format of image files, registered from outside edgekd with a lister (FileLister):
it lists files and labels, and edgekd checks them, streams them per batch when the recipe
asks for an image_size, or decodes them into arrays (in memory, load_arrays for bench)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data.formats import FORMATS, FileDataset, FileLister, FileSplit
from edgekd.data.splits import load_arrays, load_splits
from edgekd.data.stream import sources
from edgekd.errors import DataError
from edgekd.recipe import Recipe

FLAT = "flat-pngs"
CLASSES = ("dark", "light")
GREY = {0: 40, 1: 210}  # every image of a class is one flat grey, so a pixel tells its class


def write_flat_folder(root, per_class: int = 10, size=(20, 24)):
    """root/<class>_<i>.png, no class folders: a layout imagefolder does not read. Every
    fifth image of a class is a test image (named in the lister, not in the folder)."""
    from PIL import Image

    root.mkdir()
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            pixels = np.full(size, GREY[label], dtype=np.uint8)
            Image.fromarray(pixels, "L").save(root / f"{name}_{i:02d}.png")
    return root


def list_flat(name, path, skip_bad):
    """The user's lister: labels from the file names, every fifth image to the test split."""
    from pathlib import Path

    splits = {"train": ([], []), "test": ([], [])}
    for file in sorted(Path(path).glob("*.png")):
        label, number = file.stem.rsplit("_", 1)
        files, labels = splits["test" if int(number) % 5 == 0 else "train"]
        files.append(str(file))
        labels.append(CLASSES.index(label))
    train, test = (FileSplit(files, np.array(labels, dtype=np.int64)) for files, labels in splits.values())
    return FileDataset(name, train, test, CLASSES, str(path), {})


@pytest.fixture
def flat_format():
    """Register the flat format for one test; the lister's calls are recorded in the list yielded."""
    calls = []

    def lister(name, path, skip_bad):
        calls.append((name, path, skip_bad))
        return list_flat(name, path, skip_bad)

    FORMATS.register(FLAT, FileLister(lister))
    yield calls
    FORMATS.unregister(FLAT)
    assert FLAT not in FORMATS


def test_a_user_lister_is_streamed_from_a_recipe(flat_format, tmp_path):
    folder = write_flat_folder(tmp_path / "flat")
    recipe = Recipe.from_dict({"data": {"name": FLAT, "path": str(folder), "image_size": 16, "val_fraction": 0.25,
                                        "calib_size": 4, "workers": 0, "skip_bad": True, "mean": 0.5, "std": 0.5}})
    splits = load_splits(recipe.data, seed=0)
    assert flat_format == [(FLAT, str(folder), True)]  # data.skip_bad reaches the lister
    assert splits.stream is not None and splits.stream.kind == "files" and splits.train_x is None
    spec = splits.spec
    assert (spec.name, spec.channels, spec.height, spec.width, spec.class_names) == (FLAT, 1, 16, 16, CLASSES)
    assert len(splits.stream.train) + len(splits.stream.val) == 16 and len(splits.test_y) == 4
    streamed = set(splits.stream.train.files) | set(splits.stream.val.files)
    assert streamed == {str(f) for f in folder.glob("*.png") if int(f.stem[-2:]) % 5}
    # the decoded sets (val, test, calibration) and the streamed batches: each image is its class's grey
    for x, y in ((splits.val_x, splits.val_y), (splits.test_x, splits.test_y), (splits.calib_x, splits.calib_y)):
        assert x.shape[1:] == (1, 16, 16)
        assert all((image == GREY[int(label)]).all() for image, label in zip(x, y))
    train_source, _ = sources(splits)
    images = np.concatenate([batch.numpy() for batch in train_source.images()])
    expected = (np.array([GREY[int(label)] for label in splits.stream.train.labels]) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(images.reshape(len(images), -1), np.repeat(expected[:, None], 256, axis=1), atol=1e-6)


def test_a_user_lister_is_read_into_arrays_without_image_size(flat_format, tmp_path):
    folder = write_flat_folder(tmp_path / "flat")
    splits = load_splits(Recipe.from_dict({"data": {"name": FLAT, "path": str(folder), "workers": 0}}).data, seed=0)
    assert splits.stream is None and splits.train_x.shape[1:] == (1, 20, 24)
    train_x, train_y, test_x, test_y, names = load_arrays(FLAT, str(folder))  # what bench --data reads
    assert names == CLASSES and train_x.shape == (16, 1, 20, 24) and test_x.shape == (4, 1, 20, 24)
    assert flat_format[-1] == (FLAT, str(folder), False)
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert all((image == GREY[int(label)]).all() for image, label in zip(x, y))


def test_a_lister_that_returns_something_else_is_a_one_line_data_error(tmp_path):
    FORMATS.register(FLAT, FileLister(lambda name, path, skip_bad: [path]))
    try:
        for load in (lambda: load_splits(Recipe.from_dict({"data": {"name": FLAT}}).data),
                     lambda: load_arrays(FLAT, str(tmp_path))):
            with pytest.raises(DataError) as exc:
                load()
            assert str(exc.value) == (f"dataset format '{FLAT}' returned a list; its lister must return "
                                      "edgekd.data.formats.FileDataset")
    finally:
        FORMATS.unregister(FLAT)
