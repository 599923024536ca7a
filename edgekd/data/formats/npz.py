"""The .npz formats: `npz` (a user's np.savez file, x/y or train/test arrays) and
`fashion-mnist-subset`, the embedded default dataset stored as one."""

from __future__ import annotations

import math
import os
import zipfile
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np

from edgekd.configtools import clip
from edgekd.data.base import (
    MAX_CLASS_NAME,
    MAX_CLASSES,
    RawArrays,
    check_memory,
    generic_class_names,
    need_path,
    size_text,
)
from edgekd.data.formats.registry import FORMATS
from edgekd.errors import DataError, joined_lines
from edgekd.io.regular import not_regular, open_regular, what_it_is

EMBEDDED_FILE = "fashion_mnist_subset.npz"  # inside edgekd/assets/


MAX_DEFLATE_RATIO = 1100  # deflate never expands more than 1032:1; a member claiming more lies


ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip


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
    """An np.savez file holding x,y (1/6 of it carved out as test) or train_x,train_y,test_x,test_y.

    Only the members the layout uses are read, each after its header was checked against
    the file (npz_member): a forged header is a DataError, never a huge allocation. Every
    DataError is one line of at most 300 characters."""
    try:
        return _load_npz(file, name)
    except DataError as exc:
        raise DataError(clip(str(exc))) from exc.__cause__


def _load_npz(file: Path, name: str) -> RawArrays:
    kind = not_regular(file)
    if kind == "missing":
        raise DataError(f"npz file {file} not found; pass --data-path FILE.npz holding {_NPZ_LAYOUT}")
    if kind is not None:  # a FIFO would block the reader forever, a device never end
        raise not_an_npz(file, kind)
    try:
        check_npz_magic(file, _NPZ_LAYOUT)
        # lazy: a member is read when it is used; opened once, as a regular file (open_regular)
        with open_regular(file, lambda kind: not_an_npz(file, kind)) as f, np.load(f, allow_pickle=False) as data:
            keys = set(data.files)
            if {"train_x", "train_y", "test_x", "test_y"} <= keys:
                used = ("train_x", "train_y", "test_x", "test_y")
            elif {"x", "y"} <= keys:
                used = ("x", "y")
            else:
                raise DataError(f"{file} has arrays {array_names(keys)}; expected {_NPZ_LAYOUT}")
            used += ("class_names",) if "class_names" in keys else ()
            arrays = {key: npz_member(data, key, file) for key in used}
    except DataError:
        raise
    except Exception as exc:  # zip, format or pickle errors all mean "not a plain .npz"
        raise DataError(
            f"cannot read {file} as .npz ({joined_lines(exc)}); expected np.savez output with {_NPZ_LAYOUT}"
        ) from exc

    if "train_x" in arrays:
        train_x, train_y = _npz_pair(arrays, "train_x", "train_y", file)
        test_x, test_y = _npz_pair(arrays, "test_x", "test_y", file)
    else:
        x, y = _npz_pair(arrays, "x", "y", file)
        if len(x) < 2:
            raise DataError(f"{file} has {len(x)} images; at least 2 are needed to carve out a test split")
        # Test split: the last 1/6 after a fixed-seed shuffle, the same for every run.
        order = np.random.default_rng(0).permutation(len(x))
        n_test = max(1, len(x) // 6)
        train_x, train_y = x[order[:-n_test]], y[order[:-n_test]]
        test_x, test_y = x[order[-n_test:]], y[order[-n_test:]]

    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{file}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
        if not 0 < len(names) <= MAX_CLASSES or names.dtype.itemsize > 4 * MAX_CLASS_NAME:
            raise DataError(f"{file}: class_names must hold 1 to {MAX_CLASSES:,} names of at most "
                            f"{MAX_CLASS_NAME} characters, got {len(names):,} of {names.dtype}")
        try:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
        except UnicodeDecodeError as exc:
            raise DataError(f"{file}: class_names are not UTF-8 text ({joined_lines(exc)})") from exc
    else:
        class_names = generic_class_names(train_y, test_y, source=str(file))
    return RawArrays(name, train_x, train_y, test_x, test_y, class_names, str(file))


def check_npz_magic(file: Path, layout: str) -> None:
    """A DataError unless `file` starts like a zip archive (what np.savez writes); `layout`
    says what it should hold."""
    with open_regular(file, lambda kind: not_an_npz(file, kind)) as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{file} is a single .npy array, not an .npz archive; save {layout} with np.savez")
    if not magic.startswith(ZIP_MAGICS):
        raise DataError(f"{file} is not an .npz archive (np.savez writes a zip file); save {layout} with np.savez")


def not_an_npz(file, kind: str) -> DataError:
    """The error for an .npz path that is not a regular file (`kind`: what it is)."""
    return DataError(f"{file} {what_it_is(kind)}; pass the path of an .npz file written by np.savez")


def array_names(keys) -> str:
    shown = sorted(str(k)[:20] for k in list(keys)[:8])
    return str(shown) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def npz_member(data, key: str, file) -> np.ndarray:
    """Member `key` of an open np.load(.npz) archive, read only after its .npy header was
    checked against the file: a plain (non-object) dtype, a declared size equal to what the
    zip entry holds, an entry that fits in the file (stored) or in what deflate can expand
    to (compressed), and an array that fits in memory. Anything else is a DataError."""
    zf = data.zip
    names = set(zf.namelist())
    member = key if key in names else key + ".npy"  # the member np.load's data[key] reads
    info = zf.getinfo(member)
    real_size = os.path.getsize(file)
    where = f"{file}: member '{key}'"
    if info.compress_size > real_size:
        raise DataError(f"{where} claims {size_text(info.compress_size)} but the file has {size_text(real_size)}; "
                        "the archive is truncated or forged")
    if info.compress_type == zipfile.ZIP_STORED:
        expandable = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        expandable = info.compress_size * MAX_DEFLATE_RATIO
    else:
        raise DataError(f"{where} uses zip compression method {info.compress_type}; np.savez writes stored or "
                        "deflated members only; save it again with np.savez")
    if info.file_size > expandable:
        raise DataError(f"{where} declares {size_text(info.file_size)}, more than its {size_text(info.compress_size)} "
                        "of data can hold; the archive is corrupt or forged")
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
            header = f.tell()
    except Exception as exc:  # bad magic, a header that is not a dict of shape/dtype, ...
        raise DataError(f"{where} is not a valid .npy array ({joined_lines(exc)}); save it again with np.savez") from exc
    if dtype.hasobject:
        raise DataError(f"cannot read {file}: member '{key}' holds Python objects ({dtype}), which would need "
                        "pickle; refusing it; save numeric and string arrays only")
    nbytes = math.prod(shape) * dtype.itemsize
    if header + nbytes != info.file_size:
        raise DataError(f"{where} declares shape {shape} ({size_text(nbytes)}) but holds "
                        f"{size_text(max(info.file_size - header, 0))}; the archive is corrupt or forged")
    check_memory(nbytes, where, "use a smaller dataset or a machine with more memory")
    return data[key]


def _npz_pair(arrays: dict, x_key: str, y_key: str, file: Path):
    x, y = arrays[x_key], arrays[y_key]
    if x.dtype != np.uint8:
        raise DataError(
            f"{file}: {x_key} must be uint8 images (0..255), got {x.dtype}; convert with x.astype(np.uint8)"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{file}: {y_key} must be a 1-D integer label array, got {y.dtype} {y.shape}")
    if x.ndim not in (3, 4):
        to_nchw(x, x_key, file)  # raises the DataError that names the layouts
    if len(x) != len(y):
        raise DataError(f"{file}: {x_key} has {len(x)} images but {y_key} has {len(y)} labels; they must match")
    return to_nchw(x, x_key, file), y.astype(np.int64)


def to_nchw(x: np.ndarray, key: str, file) -> np.ndarray:
    """Accept (N,H,W), (N,H,W,C) with C in 1 or 3, or (N,C,H,W); return (N,C,H,W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if x.shape[1] in (1, 3):
            return x
    raise DataError(f"{file}: {key} has shape {x.shape}; expected (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1 or 3")
