"""edgekd.data: loaders, validation messages, splits and the embedded subset."""

from __future__ import annotations

import ast
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekd.data import base as data_base
from edgekd.data import splits as data
from edgekd.data.config import DataConfig
from edgekd.data.formats import FORMATS
from edgekd.data.formats.idx import FASHION_MNIST_CLASSES, read_idx
from edgekd.data.splits import (
    DataSpec,
    channel_mean_std,
    load_arrays,
    load_splits,
    save_eval_set,
)
from edgekd.errors import DataError

# --------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """A hand-written IDX file: 0, 0, dtype code 0x08 (uint8), ndim, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    raw = idx_bytes(array)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx_folder(folder: Path, n_train=6, n_test=4, gz=True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 3, 2), dtype=np.uint8),
        "train_y": np.arange(n_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, (n_test, 3, 2), dtype=np.uint8),
        "test_y": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for key, stem in data.IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def indexed_images(n: int, shape=(1, 4, 4)) -> np.ndarray:
    """Images whose first two pixels spell out their own index, to track them through splits."""
    x = np.zeros((n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    flat[:, 0] = np.arange(n) // 256
    flat[:, 1] = np.arange(n) % 256
    return x


def ids(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.int64)
    return flat[:, 0] * 256 + flat[:, 1]


@pytest.fixture(autouse=True)
def isolated_search(monkeypatch, tmp_path):
    """Tests never see the machine's datasets unless they ask for them."""
    monkeypatch.delenv("EDGEKD_DATA", raising=False)
    monkeypatch.setattr(data_base, "SYSTEM_DATA_DIR", str(tmp_path / "system-datasets"))


# --------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    back = read_idx(write_idx(tmp_path / f"images{suffix}", images))
    assert back.dtype == np.uint8 and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, images)
    labels = read_idx(write_idx(tmp_path / f"labels{suffix}", np.array([7, 0, 9], np.uint8)))
    np.testing.assert_array_equal(labels, [7, 0, 9])


def test_idx_big_endian_int32(tmp_path):
    # dtype code 0x0C is a big-endian int32: 258 is stored as 00 00 01 02.
    raw = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 2) + bytes([0, 0, 1, 2, 255, 255, 255, 255])
    (tmp_path / "ints").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), [258, -1])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_loads_as_nchw(tmp_path, gz):
    arrays = make_idx_folder(tmp_path / "fm", gz=gz)
    train_x, train_y, test_x, test_y, names = load_arrays("fashion-mnist", str(tmp_path / "fm"))
    assert train_x.shape == (6, 1, 3, 2) and test_x.shape == (4, 1, 3, 2)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    np.testing.assert_array_equal(train_x[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(test_y, [0, 1, 2, 3])
    assert names == FASHION_MNIST_CLASSES
    assert names[9] == "Ankle boot"


def test_mnist_found_under_edgekd_data(tmp_path, monkeypatch):
    make_idx_folder(tmp_path / "store" / "mnist")
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path / "store"))
    *_, names = load_arrays("mnist", None)
    assert names == tuple("0123456789")


def test_truncated_idx_is_data_error(tmp_path):
    raw = idx_bytes(np.zeros((4, 3, 2), np.uint8))
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(DataError) as exc:
        read_idx(tmp_path / "short")
    assert "truncated" in one_line(exc) and "short" in str(exc.value)
    # A .gz cut in the middle fails in gzip itself.
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw)[:20])
    with pytest.raises(DataError, match="short.gz"):
        read_idx(tmp_path / "short.gz")


def test_bad_magic_and_dtype_are_data_errors(tmp_path):
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="dtype code 0x07"):
        read_idx(tmp_path / "code")


def test_image_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError) as exc:
        load_arrays("fashion-mnist", str(tmp_path / "fm"))
    assert "6 images" in one_line(exc) and "5 labels" in str(exc.value)


def test_missing_folder_names_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        load_arrays("fashion-mnist", str(missing))
    message = one_line(exc)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-path" in message


def test_missing_without_path_lists_env_and_system_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as exc:
        load_arrays("fashion-mnist", None)
    message = one_line(exc)
    expected = (tmp_path / "env", tmp_path / "env" / "fashion-mnist", tmp_path / "system-datasets" / "fashion-mnist")
    for folder in expected:
        assert str(folder) in message


def test_missing_one_idx_file(tmp_path):
    make_idx_folder(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_arrays("fashion-mnist", str(tmp_path / "fm"))


def test_name_may_be_an_idx_folder(tmp_path):
    make_idx_folder(tmp_path / "my-fashion")
    splits = load_splits(DataConfig(name=str(tmp_path / "my-fashion"), calib_size=2), seed=0)
    assert splits.spec.name == "my-fashion"
    assert splits.spec.class_names == FASHION_MNIST_CLASSES


# --------------------------------------------------------------------------------------
# Embedded subset and splits


@pytest.fixture(scope="module")
def embedded():
    return load_arrays("fashion-mnist-subset", None)


def test_embedded_subset_is_balanced(embedded):
    train_x, train_y, test_x, test_y, names = embedded
    assert train_x.shape == (10000, 1, 28, 28) and test_x.shape == (2000, 1, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.bincount(train_y), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [200] * 10)
    assert train_x.max() == 255 and train_x.min() == 0


def test_default_splits_sizes_and_stratified_val():
    splits = load_splits(DataConfig(), seed=0)
    assert len(splits.train_x) + len(splits.val_x) == 10000
    assert len(splits.val_x) == 1000  # val_fraction 0.1
    np.testing.assert_array_equal(np.bincount(splits.val_y), [100] * 10)
    assert splits.calib_x.shape == (512, 1, 28, 28) and len(splits.calib_y) == 512
    assert len(splits.test_x) == 2000
    assert splits.spec.channels == 1 and splits.spec.height == splits.spec.width == 28
    assert splits.spec.num_classes == 10
    assert splits.spec.source.endswith("fashion_mnist_subset.npz")


def save_indexed_npz(path: Path, n=300, classes=3) -> Path:
    np.savez(path, x=indexed_images(n), y=np.arange(n) % classes)
    return path


def test_splits_are_disjoint_and_add_up(tmp_path):
    file = save_indexed_npz(tmp_path / "toy.npz")
    splits = load_splits(DataConfig(name="npz", path=str(file), val_fraction=0.2, calib_size=50), seed=3)
    train, val, test, calib = (set(ids(getattr(splits, f"{s}_x")).tolist()) for s in ("train", "val", "test", "calib"))
    assert len(test) == 300 // 6 == len(splits.test_x)
    assert len(train) == len(splits.train_x) and len(val) == len(splits.val_x)  # no duplicates
    assert train | val | test == set(range(300))
    assert not train & val and not train & test and not val & test
    assert calib <= train and len(calib) == 50
    assert len(val) == 50  # 20% of the 250 train images, per class
    # Labels travel with their images: label = id % 3.
    np.testing.assert_array_equal(splits.val_y, ids(splits.val_x) % 3)
    np.testing.assert_array_equal(splits.calib_y, ids(splits.calib_x) % 3)


def test_splits_deterministic_per_seed(tmp_path):
    cfg = DataConfig(name="npz", path=str(save_indexed_npz(tmp_path / "toy.npz")), calib_size=20)
    a, b, c = load_splits(cfg, seed=0), load_splits(cfg, seed=0), load_splits(cfg, seed=1)
    for key in ("train_x", "train_y", "val_x", "test_x", "calib_x"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.spec == b.spec
    assert set(ids(a.val_x)) != set(ids(c.val_x))
    assert not np.array_equal(ids(a.calib_x), ids(c.calib_x))
    np.testing.assert_array_equal(a.test_x, c.test_x)  # test split does not depend on the seed


def test_limits(tmp_path):
    cfg = DataConfig(name="npz", path=str(save_indexed_npz(tmp_path / "toy.npz")), limit_train=60, limit_test=7,
                     val_fraction=0.5, calib_size=1000)  # fmt: skip
    splits = load_splits(cfg, seed=0)
    assert len(splits.train_x) + len(splits.val_x) == 60
    assert len(splits.test_x) == 7
    assert len(splits.calib_x) == len(splits.train_x)  # calib_size clipped to what train has


def test_channel_mean_std_hand_computed():
    x = np.zeros((2, 2, 1, 2), np.uint8)
    x[0, 0] = [[0, 255]]
    x[1, 0] = [[255, 255]]  # channel 0 values 0, 255, 255, 255 -> 0, 1, 1, 1
    x[:, 1] = 51  # channel 1 is 0.2 everywhere
    mean, std = channel_mean_std(x)
    np.testing.assert_allclose(mean, [0.75, 0.2])
    np.testing.assert_allclose(std, [np.sqrt(0.75 * 0.25), 0.0], atol=1e-12)  # sqrt(p(1-p)), p = 0.75


def test_spec_mean_std_is_from_train_part(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 256, (60, 3, 4, 4), dtype=np.uint8), y=np.arange(60) % 2)
    splits = load_splits(DataConfig(name="npz", path=str(tmp_path / "rgb.npz"), calib_size=4))
    scaled = splits.train_x / 255.0
    np.testing.assert_allclose(splits.spec.mean, scaled.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(splits.spec.std, scaled.std(axis=(0, 2, 3)))


# --------------------------------------------------------------------------------------
# npz


def test_npz_hw_layout_and_class_names(tmp_path):
    x = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    np.savez(tmp_path / "d.npz", train_x=x, train_y=[0, 1, 0, 1, 0], test_x=x[:2], test_y=[1, 1],
             class_names=np.array(["cat", "dog"]))  # fmt: skip
    train_x, train_y, test_x, _, names = load_arrays("npz", str(tmp_path / "d.npz"))
    assert train_x.shape == (5, 1, 2, 3) and test_x.shape == (2, 1, 2, 3)
    np.testing.assert_array_equal(train_x[:, 0], x)
    assert train_y.dtype == np.int64 and names == ("cat", "dog")


def test_npz_hwc_layout_becomes_chw(tmp_path):
    x = np.zeros((6, 4, 5, 3), np.uint8)
    x[:, 1, 2, 0], x[:, 1, 2, 2] = 10, 30  # pixel (row 1, col 2): red 10, blue 30
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
    train_x, _, test_x, _, names = load_arrays("npz", str(tmp_path / "d.npz"))
    assert train_x.shape == (5, 3, 4, 5) and test_x.shape == (1, 3, 4, 5)  # 1/6 carved out as test
    assert train_x.flags.c_contiguous
    assert (train_x[:, 0, 1, 2] == 10).all() and (train_x[:, 2, 1, 2] == 30).all()
    assert train_x.sum() == 5 * 40
    assert names == ("0", "1")


def test_npz_chw_and_name_as_path(tmp_path):
    np.savez(tmp_path / "mine.npz", x=np.ones((12, 3, 8, 8), np.uint8), y=np.arange(12) % 4)
    splits = load_splits(DataConfig(name=str(tmp_path / "mine.npz"), calib_size=3))
    assert splits.spec.name == "mine" and splits.spec.channels == 3 and splits.spec.num_classes == 4


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.zeros((6, 4, 4), np.float32), y=np.zeros(6, int)), "must be uint8"),
        (dict(x=np.zeros((6, 4, 4), np.uint8), y=np.zeros(5, int)), "6 images but y has 5 labels"),
        (dict(images=np.zeros((6, 4, 4), np.uint8)), "expected x,y or train_x"),
        (dict(x=np.zeros((6, 4, 4, 5), np.uint8), y=np.zeros(6, int)), r"has shape \(6, 4, 4, 5\)"),
    ],
)
def test_npz_malformed(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as exc:
        load_arrays("npz", str(tmp_path / "bad.npz"))
    assert str(tmp_path / "bad.npz") in one_line(exc)


def test_npz_with_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=[0])
    with pytest.raises(DataError, match="cannot read"):
        load_arrays("npz", str(tmp_path / "obj.npz"))


def test_npz_needs_a_path():
    with pytest.raises(DataError, match="--data-path FILE.npz"):
        load_arrays("npz", None)


# --------------------------------------------------------------------------------------
# CIFAR


def cifar_batch(n: int, start: int, protocol: int) -> bytes:
    images = np.zeros((n, 3072), np.uint8)
    images[:, 0] = np.arange(start, start + n)  # red channel, pixel (0, 0)
    images[:, 1024 + 33] = 7  # green channel, pixel (1, 1)
    return pickle.dumps({b"batch_label": b"x", b"data": images, b"labels": [i % 10 for i in range(n)]}, protocol)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_synthetic(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(cifar_batch(4, 4 * (i - 1), protocol))
    (folder / "test_batch").write_bytes(cifar_batch(3, 100, protocol))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol))

    # Found through the parent folder too.
    train_x, train_y, test_x, test_y, class_names = load_arrays("cifar10", str(tmp_path))
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(train_x[:, 0, 0, 0], np.arange(20))
    assert (train_x[:, 1, 1, 1] == 7).all()
    np.testing.assert_array_equal(test_x[:, 0, 0, 0], [100, 101, 102])
    np.testing.assert_array_equal(train_y[:5], [0, 1, 2, 3, 0])
    assert train_y.dtype == np.int64 and class_names[3] == "class3"


def test_cifar_numpy1_global_names(tmp_path):
    # The real CIFAR files name numpy.core.multiarray._reconstruct (numpy 1); numpy 2 moved it.
    legacy = cifar_batch(2, 5, 2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in legacy
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(legacy)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, 2))
    train_x, *_ = load_arrays("cifar10", str(folder))
    np.testing.assert_array_equal(train_x[:2, 0, 0, 0], [5, 6])


def test_cifar100_synthetic_with_str_keys(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = np.full((5, 3072), 9, np.uint8)
    for split in ("train", "test"):
        batch = {"data": x, "fine_labels": [0, 1, 2, 3, 99], "coarse_labels": [0] * 5}
        (folder / split).write_bytes(pickle.dumps(batch, 2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, 2))
    train_x, train_y, _, _, names = load_arrays("cifar100", str(folder))
    assert train_x.shape == (5, 3, 32, 32) and len(names) == 100 and train_y[-1] == 99


class _Evil:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    canary = tmp_path / "canary"
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10, b"x": _Evil(canary)}))
    (folder / "test_batch").write_bytes(cifar_batch(2, 0, 2))
    with pytest.raises(DataError) as exc:
        load_arrays("cifar10", str(folder))
    assert "system" in one_line(exc) and "refusing" in str(exc.value)
    assert not canary.exists()


def test_cifar_pickle_cannot_use_other_numpy_or_builtins(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"")
    payload = pickle.dumps({b"label_names": [b"a"], b"f": eval})  # pickles as builtins.eval
    (folder / "batches.meta").write_bytes(payload)
    with pytest.raises(DataError, match="builtins.eval"):
        load_arrays("cifar10", str(folder))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"f": np.load}))
    with pytest.raises(DataError, match="refusing"):
        load_arrays("cifar10", str(folder))


def test_cifar_missing_lists_folders(tmp_path):
    with pytest.raises(DataError) as exc:
        load_arrays("cifar10", str(tmp_path))
    message = one_line(exc)
    assert str(tmp_path / "cifar-10-batches-py") in message and "cs.toronto.edu" in message


# --------------------------------------------------------------------------------------
# Image folders


def write_png(path: Path, array: np.ndarray, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_imagefolder_grayscale(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for label, cls in enumerate(("bird", "ant")):
            for i in range(n):
                write_png(tmp_path / split / cls / f"{i}.png", np.full((5, 4), 10 * label + i, np.uint8), "L")
    train_x, train_y, test_x, test_y, names = load_arrays("imagefolder", str(tmp_path))
    assert names == ("ant", "bird")  # sorted folder names
    assert train_x.shape == (4, 1, 5, 4) and test_x.shape == (2, 1, 5, 4)  # val used as test
    # ant (label 0) was written with value 10, bird (label 1) with 0.
    np.testing.assert_array_equal(train_y, [0, 0, 1, 1])
    np.testing.assert_array_equal(train_x[:, 0, 0, 0], [10, 11, 0, 1])


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    write_png(tmp_path / "train" / "a" / "gray.png", np.full((3, 3), 50, np.uint8), "L")
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[..., 2] = 200
    write_png(tmp_path / "train" / "b" / "blue.png", rgb, "RGB")
    write_png(tmp_path / "test" / "a" / "t.png", np.full((3, 3), 1, np.uint8), "L")
    train_x, *_ = load_arrays("imagefolder", str(tmp_path))
    assert train_x.shape == (2, 3, 3, 3)
    assert (train_x[0] == 50).all()  # gray replicated into R, G and B
    np.testing.assert_array_equal(train_x[1, :, 0, 0], [0, 0, 200])


def test_imagefolder_size_mismatch_names_file(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4), np.uint8), "L")
    write_png(tmp_path / "train" / "a" / "1.png", np.zeros((4, 6), np.uint8), "L")
    write_png(tmp_path / "test" / "a" / "0.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DataError) as exc:
        load_arrays("imagefolder", str(tmp_path))
    assert "1.png" in one_line(exc) and "6x4" in str(exc.value)


def test_imagefolder_missing_layout(tmp_path):
    with pytest.raises(DataError, match="train/<class>"):
        load_arrays("imagefolder", str(tmp_path))


# --------------------------------------------------------------------------------------
# Names, eval sets, imports


def test_unknown_name_lists_available():
    with pytest.raises(DataError) as exc:
        load_splits(DataConfig(name="foo"))
    message = one_line(exc)
    assert message.startswith("unknown dataset 'foo'; available: ")
    for name in FORMATS.names():
        assert name in message


def test_save_eval_set_round_trip(tmp_path):
    spec = DataSpec("toy", 1, 2, 2, 2, ("no", "yes"), (0.5,), (0.25,), "here")
    x = np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2)
    target = tmp_path / "eval.npz"
    save_eval_set(target, x, np.array([1, 0, 1]), spec)
    assert [p.name for p in tmp_path.iterdir()] == ["eval.npz"]  # no temp file left behind
    with np.load(target, allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["x"], x)
        assert saved["y"].dtype == np.int64 and saved["y"].tolist() == [1, 0, 1]
        assert saved["class_names"].tolist() == ["no", "yes"]
        np.testing.assert_allclose(saved["mean"], [0.5])
        np.testing.assert_allclose(saved["std"], [0.25])
    # An eval set is itself a valid 'npz' dataset.
    *_, names = load_arrays("npz", str(target))
    assert names == ("no", "yes")


def test_save_eval_set_rejects_wrong_shape(tmp_path):
    spec = DataSpec("toy", 1, 2, 2, 2, ("a", "b"), (0.5,), (0.25,), "here")
    with pytest.raises(DataError, match="uint8"):
        save_eval_set(tmp_path / "e.npz", np.zeros((3, 1, 2, 2), np.float32), np.zeros(3), spec)
    assert list(tmp_path.iterdir()) == []


def test_data_module_does_not_import_torch(imported_modules):
    tree = ast.parse(Path(data.__file__).read_text())
    assert not imported_modules(data.__file__) & {"torch", "torchvision"}
    top_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert "PIL" not in top_level  # imported lazily inside the image-folder loader


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data_base, "SYSTEM_DATA_DIR", "/usr/share/datasets")
    train_x, train_y, test_x, test_y, _ = load_arrays("fashion-mnist", None)
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
