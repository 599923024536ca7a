"""The .npz formats: `npz` (a user's np.savez file, x/y or train/test arrays) and
`fashion-mnist-subset`, the embedded default dataset stored as one."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

import numpy as np

from edgekd.data.base import RawArrays, generic_class_names, need_path
from edgekd.data.formats.registry import FORMATS
from edgekd.errors import DataError, joined_lines

EMBEDDED_FILE = "fashion_mnist_subset.npz"  # inside edgekd/assets/


_NPZ_LAYOUT = "x,y or train_x,train_y,test_x,test_y (uint8 images, integer labels), optional class_names"


@FORMATS.register("fashion-mnist-subset")
def load_subset(name: str, path: str | None) -> RawArrays:
    """The embedded subset (data.path is not used)."""
    return load_embedded()


@FORMATS.register("npz")
def load_npz_format(name: str, path: str | None) -> RawArrays:
    """The .npz file at data.path."""
    return load_npz(Path(need_path(name, path, "FILE.npz")), name)


def load_embedded() -> RawArrays:
    """edgekd/assets/fashion_mnist_subset.npz: 10,000 train and 2,000 test Fashion-MNIST images."""
    resource = files("edgekd") / "assets" / EMBEDDED_FILE
    with as_file(resource) as file:
        if not Path(file).is_file():
            raise DataError(
                f"the embedded dataset edgekd/assets/{EMBEDDED_FILE} is missing (looked at {file}); "
                "reinstall edgekd or rebuild it with `python scripts/make_embedded_subset.py`"
            )
        raw = load_npz(Path(file), "fashion-mnist-subset")
    return raw


def load_npz(file: Path, name: str) -> RawArrays:
    """An np.savez file holding x,y (1/6 of it carved out as test) or train_x,train_y,test_x,test_y."""
    if not file.is_file():
        raise DataError(f"npz file {file} not found; pass --data-path FILE.npz holding {_NPZ_LAYOUT}")
    try:
        with np.load(file, allow_pickle=False) as data:  # allow_pickle=False: no code from the file
            if not hasattr(data, "files"):
                raise DataError(f"{file} is a single .npy array, not an .npz archive; save {_NPZ_LAYOUT} with np.savez")
            arrays = {key: data[key] for key in data.files}
    except DataError:
        raise
    except Exception as exc:  # zip, format or pickle errors all mean "not a plain .npz"
        raise DataError(
            f"cannot read {file} as .npz ({joined_lines(exc)}); expected np.savez output with {_NPZ_LAYOUT}"
        ) from exc

    if {"train_x", "train_y", "test_x", "test_y"} <= arrays.keys():
        train_x, train_y = _npz_pair(arrays, "train_x", "train_y", file)
        test_x, test_y = _npz_pair(arrays, "test_x", "test_y", file)
    elif {"x", "y"} <= arrays.keys():
        x, y = _npz_pair(arrays, "x", "y", file)
        if len(x) < 2:
            raise DataError(f"{file} has {len(x)} images; at least 2 are needed to carve out a test split")
        # Test split: the last 1/6 after a fixed-seed shuffle, the same for every run.
        order = np.random.default_rng(0).permutation(len(x))
        n_test = max(1, len(x) // 6)
        train_x, train_y = x[order[:-n_test]], y[order[:-n_test]]
        test_x, test_y = x[order[-n_test:]], y[order[-n_test:]]
    else:
        raise DataError(f"{file} has arrays {sorted(arrays)}; expected {_NPZ_LAYOUT}")

    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{file}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    else:
        class_names = generic_class_names(train_y, test_y)
    return RawArrays(name, train_x, train_y, test_x, test_y, class_names, str(file))


def _npz_pair(arrays: dict, x_key: str, y_key: str, file: Path):
    x, y = arrays[x_key], arrays[y_key]
    if x.dtype != np.uint8:
        raise DataError(
            f"{file}: {x_key} must be uint8 images (0..255), got {x.dtype}; convert with x.astype(np.uint8)"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{file}: {y_key} must be a 1-D integer label array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{file}: {x_key} has {len(x)} images but {y_key} has {len(y)} labels; they must match")
    return _to_nchw(x, x_key, file), y.astype(np.int64)


def _to_nchw(x: np.ndarray, key: str, file) -> np.ndarray:
    """Accept (N,H,W), (N,H,W,C) with C in 1 or 3, or (N,C,H,W); return (N,C,H,W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if x.shape[1] in (1, 3):
            return x
    raise DataError(f"{file}: {key} has shape {x.shape}; expected (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1 or 3")
