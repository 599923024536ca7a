"""Dataset formats registry, used from outside edgekd as a user's plugin would: register a
toy format, load it through a recipe, and get the registry's error for unknown names."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data.config import DataConfig
from edgekd.data.formats import FORMATS, FileLister, RawArrays
from edgekd.data.splits import load_arrays, load_splits
from edgekd.errors import ConfigError, DataError
from edgekd.recipe import Recipe

TOY = "toy-format"
TOY_CLASSES = ("circle", "square", "triangle")
N_TRAIN, N_TEST, SHAPE = 60, 12, (1, 6, 5)
BUILT_IN = ("fashion-mnist-subset", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "npz")


def toy_images(n: int, start: int) -> np.ndarray:
    """n images whose first pixel is their index (start, start+1, ...); the rest is noise."""
    x = np.random.default_rng(start).integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = np.arange(start, start + n)
    return x


@pytest.fixture
def toy_format():
    """Register the toy format for one test; the calls it gets are recorded in the list yielded."""
    calls = []

    @FORMATS.register(TOY)
    def load_toy(name, path):
        calls.append((name, path))
        labels = np.arange(N_TRAIN + N_TEST, dtype=np.int64) % len(TOY_CLASSES)
        return RawArrays(name, toy_images(N_TRAIN, 0), labels[:N_TRAIN], toy_images(N_TEST, N_TRAIN),
                         labels[N_TRAIN:], TOY_CLASSES, "generated in the test")  # fmt: skip

    yield calls
    FORMATS.unregister(TOY)
    assert TOY not in FORMATS


def test_built_in_formats_are_registered():
    assert set(BUILT_IN) <= set(FORMATS.names())
    for name in BUILT_IN:
        entry = FORMATS.get(name)
        assert callable(entry) or isinstance(entry, FileLister)  # a loader, or a lister of files


def test_toy_format_from_a_recipe(toy_format):
    recipe = Recipe.from_dict({"data": {"name": TOY, "val_fraction": 0.2, "calib_size": 8}})
    splits = load_splits(recipe.data, seed=0)
    assert toy_format == [(TOY, None)]
    spec = splits.spec
    assert (spec.name, spec.channels, spec.height, spec.width) == (TOY, *SHAPE)
    assert spec.num_classes == 3 and spec.class_names == TOY_CLASSES and spec.source == "generated in the test"
    assert len(splits.train_x) + len(splits.val_x) == N_TRAIN and len(splits.val_x) == 12  # 20% of each class
    assert splits.train_x.shape[1:] == SHAPE and splits.train_x.dtype == np.uint8
    assert splits.calib_x.shape == (8, *SHAPE)
    # The toy's own images, labels travelling with them: image i has label i % 3.
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y), (splits.test_x, splits.test_y)):
        ids = x.reshape(len(x), -1)[:, 0].astype(np.int64)
        np.testing.assert_array_equal(y, ids % 3)
    np.testing.assert_array_equal(splits.test_x, toy_images(N_TEST, N_TRAIN))
    assert sorted(splits.train_x.reshape(len(splits.train_x), -1)[:, 0].tolist()
                  + splits.val_x.reshape(len(splits.val_x), -1)[:, 0].tolist()) == list(range(N_TRAIN))  # fmt: skip


def test_toy_format_gets_the_recipe_path(toy_format, tmp_path):
    *_, names = load_arrays(TOY, str(tmp_path))
    assert names == TOY_CLASSES and toy_format == [(TOY, str(tmp_path))]


def test_unknown_name_is_a_config_error_listing_the_registry(toy_format):
    with pytest.raises(ConfigError) as exc:
        Recipe.from_dict({"data": {"name": "x"}})
    message = str(exc.value)
    assert message.startswith("unknown dataset 'x'; available: ") and "\n" not in message
    for name in (*BUILT_IN, TOY):
        assert name in message
    # The same error where DataConfig is built directly, and for load_arrays.
    with pytest.raises(ConfigError, match=r"^unknown dataset 'x'; available: .*toy-format"):
        DataConfig(name="x")
    with pytest.raises(ConfigError, match=r"^unknown dataset 'x'; available: "):
        load_arrays("x")


def test_unregistered_name_is_unknown_again(toy_format):
    DataConfig(name=TOY)
    FORMATS.unregister(TOY)
    with pytest.raises(ConfigError, match="unknown dataset 'toy-format'") as exc:
        DataConfig(name=TOY)
    assert isinstance(exc.value, DataError)  # also a DataError, as a dataset that cannot be found
    assert TOY not in str(exc.value).split("available: ")[1]


def test_a_loader_must_return_raw_arrays():
    @FORMATS.register("toy-wrong")
    def load_wrong(name, path):
        return {"x": np.zeros((2, 1, 2, 2), np.uint8)}

    try:
        with pytest.raises(DataError, match="format 'toy-wrong' returned a dict; .* must return"):
            load_splits(DataConfig(name="toy-wrong"))
    finally:
        FORMATS.unregister("toy-wrong")


def test_a_toy_with_bad_arrays_is_a_data_error():
    @FORMATS.register("toy-bad")
    def load_bad(name, path):
        x = np.zeros((4, 1, 2, 2), np.uint8)
        y = np.array([0, 1, 2, 5], np.int64)  # 5 is beyond the 3 class names
        return RawArrays(name, x, y, x, y, ("a", "b", "c"), "toy-bad source")

    try:
        with pytest.raises(DataError, match="toy-bad source: train labels must be in 0..2"):
            load_splits(DataConfig(name="toy-bad"))
    finally:
        FORMATS.unregister("toy-bad")


def test_a_name_twice_is_refused(toy_format):
    with pytest.raises(ValueError, match="already registered"):
        FORMATS.register(TOY)(lambda name, path: None)
