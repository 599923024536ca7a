"""The IDX formats `mnist` and `fashion-mnist`: a folder of the four IDX files (raw or .gz),
read with size checks so a truncated or forged file is a DataError, never a huge read."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from edgekd.data.base import RawArrays, check_memory, generic_class_names, search_dirs
from edgekd.data.formats.registry import FORMATS
from edgekd.errors import DataError, joined_lines
from edgekd.io.regular import not_regular, open_regular, what_it_is

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


MNIST_CLASSES = tuple(str(i) for i in range(10))


IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Parse one IDX file (raw or .gz): 2 zero bytes, a dtype code, ndim, big-endian dims, data.

    Never reads more than the header promises: a .gz that expands beyond it (a gzip
    bomb, or a corrupt file) stops at one byte past that size.
    """
    path = Path(path)
    fix = "replace it with an intact copy (reinstall the package or download it again)"
    def not_a_file(kind: str) -> DataError:
        return DataError(f"{path} {what_it_is(kind)}; {fix}")

    try:
        with open_regular(path, not_a_file) as raw, (gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
                raise DataError(
                    f"{path} is not an IDX file: bad magic number (expected 0x0000 then dtype and ndim); {fix}"
                )
            code, ndim = magic[2], magic[3]
            if code not in _IDX_DTYPES:
                raise DataError(
                    f"{path} has unknown IDX dtype code 0x{code:02x} (expected one of 08 09 0b 0c 0d 0e); {fix}"
                )
            header = 4 + 4 * ndim
            dim_bytes = f.read(4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise DataError(
                    f"{path} is truncated: {4 + len(dim_bytes)} bytes, shorter than its {header}-byte IDX header; {fix}"
                )
            dims = struct.unpack(f">{ndim}I", dim_bytes)
            dtype = np.dtype(_IDX_DTYPES[code])
            expected = math.prod(dims) * dtype.itemsize  # Python ints: a forged header cannot overflow
            if path.suffix != ".gz":  # the size is known: compare before reading anything more
                size = os.fstat(raw.fileno()).st_size
                if size != header + expected:
                    raise DataError(
                        f"{path} is truncated or corrupt: its header says shape {tuple(dims)} "
                        f"({header + expected} bytes) but the file has {size} bytes; {fix}"
                    )
            check_memory(expected, f"{path} (shape {tuple(dims)})", fix)
            body = _read_at_most(f, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:  # EOFError: a truncated .gz
        raise DataError(f"cannot read {path}: {joined_lines(exc)}; replace it with an intact copy") from exc
    if len(body) != expected:
        found = f"{header + len(body)} bytes" if len(body) < expected else "more"
        raise DataError(
            f"{path} is truncated or corrupt: its header says shape {tuple(dims)} ({header + expected} bytes) "
            f"but the file has {found}; {fix}"
        )
    # astype to native byte order also copies out of the read buffer.
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_at_most(f, limit: int) -> bytearray:
    """Up to `limit` bytes of `f`, read in chunks: memory grows with what the file really
    holds, never with what a forged header claims."""
    out = bytearray()
    while len(out) < limit:
        chunk = f.read(min(limit - len(out), 1 << 20))
        if not chunk:
            break
        out += chunk
    return out


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """folder/stem.gz, else folder/stem, else None. A FIFO or device of that name is found (and
    refused by read_idx, which never opens it blocking), not passed over as missing."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if not_regular(candidate) not in ("missing", "a folder"):
            return candidate
    return None


@FORMATS.register("mnist")
@FORMATS.register("fashion-mnist")
def load_idx(name: str, path: str | None) -> RawArrays:
    """The first folder with the IDX files: data.path, else $EDGEKD_DATA, else the system folder."""
    dirs = search_dirs(name, path)
    for folder in dirs:
        if find_idx_file(folder, IDX_FILES["train_x"]):
            return read_idx_folder(folder, name)
    if name == "fashion-mnist":
        how = "install with `apt-get install dataset-fashion-mnist` or pass --data-path DIR"
    else:
        how = "download the four MNIST IDX files into a folder and pass --data-path DIR (or set EDGEKD_DATA)"
    raise DataError(
        f"{name} IDX files ({IDX_FILES['train_x']}[.gz] and the other three) not found; "
        f"looked in {', '.join(map(str, dirs))}; {how}"
    )


def read_idx_folder(folder: Path, name: str) -> RawArrays:
    """The four IDX files in `folder` as RawArrays; class names from the name (mnist, fashion)."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        found = find_idx_file(folder, stem)
        if found is None:
            raise DataError(
                f"{folder} lacks {stem}[.gz]; an IDX dataset folder needs all four of "
                f"{', '.join(IDX_FILES.values())}; copy the missing file there"
            )
        arrays[key] = (found, read_idx(found))
    out = {}
    for split in ("train", "test"):
        (x_file, x), (y_file, y) = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim != 3:
            raise DataError(f"{x_file} must hold uint8 images (N, H, W), got {x.dtype} {x.shape}; use the image file")
        if y.dtype != np.uint8 or y.ndim != 1:
            raise DataError(f"{y_file} must hold uint8 labels (N,), got {y.dtype} {y.shape}; use the label file")
        if len(x) != len(y):
            raise DataError(
                f"{x_file} has {len(x)} images but {y_file} has {len(y)} labels; they must match, "
                "so use files from the same release"
            )
        out[split] = (x[:, None], y.astype(np.int64))
    if name == "mnist":
        class_names = MNIST_CLASSES
    elif "fashion" in name.lower():
        class_names = FASHION_MNIST_CLASSES
    else:
        class_names = generic_class_names(out["train"][1], out["test"][1], source=str(folder))
    return RawArrays(name, *out["train"], *out["test"], class_names, str(folder))
