"""Datasets as uint8 NCHW numpy arrays, split into train / val / test / calibration.

numpy only: no torch here, so evaluating an ONNX model needs nothing heavier. PIL is
imported only inside the image-folder loader.

    splits = load_splits(DataConfig(name="fashion-mnist-subset"), seed=0)
    splits.train_x.shape  # (9000, 1, 28, 28), uint8

Every missing or malformed input is a DataError whose one-line message says what was
expected, where it looked and how to get it.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .artifacts import atomic_path
from .errors import DataError
from .recipe import DataConfig

DATASETS = ("fashion-mnist-subset", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "npz")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(str(i) for i in range(10))

EMBEDDED_FILE = "fashion_mnist_subset.npz"  # inside edgekd/assets/
SYSTEM_DATA_DIR = "/usr/share/datasets"  # where Debian's dataset-* packages install
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DataSpec:
    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of train images scaled to [0, 1]
    std: tuple[float, ...]
    source: str  # where the data was read from


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class Splits:
    """Images are uint8 NCHW, labels int64. calib is drawn from train, never from val or test."""

    spec: DataSpec
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray


class _Raw(NamedTuple):
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str


# --------------------------------------------------------------------------------------
# Public entry points


def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """Load cfg's dataset and split it; the same seed always gives the same splits."""
    raw = _load(cfg.name, cfg.path)
    rng = np.random.default_rng(seed)
    train_x, train_y = _limit(raw.train_x, raw.train_y, cfg.limit_train, rng)
    # A fixed seed here, so runs with different seeds report on the same test images.
    test_x, test_y = _limit(raw.test_x, raw.test_y, cfg.limit_test, np.random.default_rng(0))

    train_idx, val_idx = _stratified_split(train_y, cfg.val_fraction, rng)
    calib_idx = rng.choice(train_idx, size=min(cfg.calib_size, len(train_idx)), replace=False)

    part_x = train_x[train_idx]
    mean, std = channel_mean_std(part_x)
    _, channels, height, width = train_x.shape
    spec = DataSpec(
        name=raw.name,
        channels=channels,
        height=height,
        width=width,
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        mean=mean,
        std=std,
        source=raw.source,
    )
    return Splits(
        spec=spec,
        train_x=part_x,
        train_y=train_y[train_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        calib_x=train_x[calib_idx],
        calib_y=train_y[calib_idx],
    )


def load_arrays(name: str, path: str | None = None):
    """Return (train_x, train_y, test_x, test_y, class_names): uint8 NCHW images, int64 labels."""
    raw = _load(name, path)
    return raw.train_x, raw.train_y, raw.test_x, raw.test_y, raw.class_names


def save_eval_set(path, x_uint8: np.ndarray, y: np.ndarray, spec: DataSpec) -> None:
    """Write a portable eval set (x, y, class_names, mean, std) that np.load reads without pickle.

    Atomic (see artifacts.atomic_path): a crash never leaves a half-written file.
    """
    x = np.asarray(x_uint8)
    y = np.asarray(y)
    if x.dtype != np.uint8 or x.shape[1:] != (spec.channels, spec.height, spec.width):
        raise DataError(
            f"eval set for {path} must be uint8 images of shape (N, {spec.channels}, {spec.height}, "
            f"{spec.width}), got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"eval set for {path} needs one label per image, got {len(x)} images and labels {y.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            x=x,
            y=y.astype(np.int64),
            class_names=np.array(spec.class_names, dtype=str),  # unicode, not object: no pickle
            mean=np.array(spec.mean, dtype=np.float32),
            std=np.array(spec.std, dtype=np.float32),
        )


def channel_mean_std(x_uint8: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NCHW images scaled to [0, 1].

    Computed from a 256-bin histogram per channel: exact, and no float copy of the images.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x_uint8.shape[1]):
        counts = np.bincount(x_uint8[:, c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * values**2).sum() / total) - mean**2
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5)  # max: rounding can make a zero variance slightly negative
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------------------
# Dispatch by name


def _load(name: str, path: str | None) -> _Raw:
    if name == "fashion-mnist-subset":
        raw = _load_embedded()
    elif name in ("fashion-mnist", "mnist"):
        raw = _load_idx(name, path)
    elif name in _CIFAR:
        raw = _load_cifar(name, path)
    elif name == "imagefolder":
        raw = _load_imagefolder(_need_path(name, path, "DIR (with train/<class>/*.png and test/<class>/*.png)"))
    elif name == "npz":
        raw = _load_npz(Path(_need_path(name, path, "FILE.npz")), "npz")
    else:
        raw = _load_by_path(name)
    _check_arrays(raw)
    return raw


def _load_by_path(name: str) -> _Raw:
    """A dataset name may also be a path: an .npz file, or a folder of IDX files."""
    candidate = Path(name).expanduser()
    if candidate.is_file() and candidate.suffix == ".npz":
        return _load_npz(candidate, candidate.stem)
    if candidate.is_dir() and _find_idx_file(candidate, IDX_FILES["train_x"]):
        return _read_idx_folder(candidate, candidate.name)
    raise DataError(f"unknown dataset '{name}'; available: {', '.join(DATASETS)} (or a path to an .npz file)")


def _need_path(name: str, path: str | None, what: str) -> str:
    if not path:
        raise DataError(f"dataset '{name}' needs a path; pass --data-path {what}")
    return path


def _search_dirs(name: str, path: str | None, extra: tuple[str, ...] = ()) -> list[Path]:
    """Folders to look in, in order: the given path, else $EDGEKD_DATA, then the system folder."""
    if path:
        roots = [Path(path).expanduser()]
    else:
        env = os.environ.get("EDGEKD_DATA")
        roots = ([Path(env).expanduser()] if env else []) + [Path(SYSTEM_DATA_DIR)]
    dirs: list[Path] = []
    for root in roots:
        for candidate in [root, root / name, *(root / sub for sub in extra)]:
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def _check_arrays(raw: _Raw) -> None:
    """Checks shared by every loader, so load_splits can trust the arrays."""
    for split in ("train", "test"):
        x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{raw.source}: {split} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != (len(x),):
            raise DataError(f"{raw.source}: {len(x)} {split} images but labels of shape {y.shape}; need one label each")
        if len(x) == 0:
            raise DataError(f"{raw.source}: the {split} split is empty; it needs at least one image")
        if y.min() < 0 or y.max() >= len(raw.class_names):
            raise DataError(
                f"{raw.source}: {split} labels must be in 0..{len(raw.class_names) - 1} "
                f"({len(raw.class_names)} class names), found {y.min()}..{y.max()}"
            )
    if raw.train_x.shape[1:] != raw.test_x.shape[1:]:
        raise DataError(
            f"{raw.source}: train images are {raw.train_x.shape[1:]} but test images are "
            f"{raw.test_x.shape[1:]}; both must be (C, H, W) alike"
        )


def _generic_class_names(*labels: np.ndarray) -> tuple[str, ...]:
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    return tuple(str(i) for i in range(top + 1))


# --------------------------------------------------------------------------------------
# Splitting


def _limit(x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator):
    """Keep `limit` random images (classes stay roughly balanced); None keeps all."""
    if limit is None or limit >= len(x):
        return x, y
    keep = np.sort(rng.permutation(len(x))[:limit])
    return x[keep], y[keep]


def _stratified_split(y: np.ndarray, val_fraction: float, rng: np.random.Generator):
    """Shuffle, then hold out about val_fraction of each class. Returns (train_idx, val_idx)."""
    if len(y) < 2:
        raise DataError(f"need at least 2 training images to hold out a validation set, got {len(y)}")
    order = rng.permutation(len(y))
    is_val = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = order[y[order] == label]
        is_val[members[: int(round(val_fraction * len(members)))]] = True
    # Tiny datasets: rounding may give an empty val or an empty train.
    if not is_val.any():
        is_val[order[0]] = True
    if is_val.all():
        is_val[order[-1]] = False
    return order[~is_val[order]], order[is_val[order]]


# --------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Parse one IDX file (raw or .gz): 2 zero bytes, a dtype code, ndim, big-endian dims, data.

    Never reads more than the header promises: a .gz that expands beyond it (a gzip
    bomb, or a corrupt file) stops at one byte past that size.
    """
    path = Path(path)
    fix = "replace it with an intact copy (reinstall the package or download it again)"
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
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
                size = os.fstat(f.fileno()).st_size
                if size != header + expected:
                    raise DataError(
                        f"{path} is truncated or corrupt: its header says shape {tuple(dims)} "
                        f"({header + expected} bytes) but the file has {size} bytes; {fix}"
                    )
            body = _read_at_most(f, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:  # EOFError: a truncated .gz
        raise DataError(f"cannot read {path}: {_one_line(exc)}; replace it with an intact copy") from exc
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


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_idx(name: str, path: str | None) -> _Raw:
    dirs = _search_dirs(name, path)
    for folder in dirs:
        if _find_idx_file(folder, IDX_FILES["train_x"]):
            return _read_idx_folder(folder, name)
    if name == "fashion-mnist":
        how = "install with `apt-get install dataset-fashion-mnist` or pass --data-path DIR"
    else:
        how = "download the four MNIST IDX files into a folder and pass --data-path DIR (or set EDGEKD_DATA)"
    raise DataError(
        f"{name} IDX files ({IDX_FILES['train_x']}[.gz] and the other three) not found; "
        f"looked in {', '.join(map(str, dirs))}; {how}"
    )


def _read_idx_folder(folder: Path, name: str) -> _Raw:
    arrays = {}
    for key, stem in IDX_FILES.items():
        found = _find_idx_file(folder, stem)
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
        class_names = _generic_class_names(out["train"][1], out["test"][1])
    return _Raw(name, *out["train"], *out["test"], class_names, str(folder))


# --------------------------------------------------------------------------------------
# .npz files, including the embedded Fashion-MNIST subset

_NPZ_LAYOUT = "x,y or train_x,train_y,test_x,test_y (uint8 images, integer labels), optional class_names"


def _load_embedded() -> _Raw:
    resource = files("edgekd") / "assets" / EMBEDDED_FILE
    with as_file(resource) as file:
        if not Path(file).is_file():
            raise DataError(
                f"the embedded dataset edgekd/assets/{EMBEDDED_FILE} is missing (looked at {file}); "
                "reinstall edgekd or rebuild it with `python scripts/make_embedded_subset.py`"
            )
        raw = _load_npz(Path(file), "fashion-mnist-subset")
    return raw


def _load_npz(file: Path, name: str) -> _Raw:
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
            f"cannot read {file} as .npz ({_one_line(exc)}); expected np.savez output with {_NPZ_LAYOUT}"
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
        class_names = _generic_class_names(train_y, test_y)
    return _Raw(name, train_x, train_y, test_x, test_y, class_names, str(file))


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


# --------------------------------------------------------------------------------------
# CIFAR "python version" pickles, read with a restricted unpickler

_CIFAR = {
    "cifar10": dict(
        title="CIFAR-10", folder="cifar-10-batches-py", meta="batches.meta", names_key="label_names",
        labels_key="labels", train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
    ),
    "cifar100": dict(
        title="CIFAR-100", folder="cifar-100-python", meta="meta", names_key="fine_label_names",
        labels_key="fine_labels", train=("train",), test=("test",),
    ),
}  # fmt: skip


def _latin1_encode(text, encoding="latin1"):
    """Stand-in for _codecs.encode, which Python 3 protocol-2 pickles use for bytes; latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    """The only callables a CIFAR pickle may name: numpy's array and dtype reconstructors."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):  # numpy 1 pickles say numpy.core, numpy 2 ones numpy._core
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # pickle protocol 5 arrays
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; naming any other global is a DataError.

    pickle.load would run whatever callable the file names (os.system, eval, ...); CIFAR
    files come from the internet, so only the numpy reconstructors above get through.
    """

    def __init__(self, file, source: Path):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 str and numpy buffers survive as-is
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self._source} asks to load '{module}.{name}', which a CIFAR batch never contains; "
                "refusing to unpickle it (download the dataset again from https://www.cs.toronto.edu/~kriz/cifar.html)"
            )
        return found

    def persistent_load(self, pid):
        raise DataError(f"{self._source} uses pickle persistent ids, which a CIFAR batch never contains; refusing it")


def _unpickle_dict(file: Path) -> dict:
    if file.exists() and not file.is_file():  # a FIFO or device would block or never end
        raise DataError(f"{file} is not a regular file; the CIFAR folder must hold the batch files themselves")
    try:
        with open(file, "rb") as f:
            obj = _RestrictedUnpickler(f, file).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(
            f"{file} is missing; the CIFAR folder must hold every batch file, so extract the archive again"
        ) from exc
    except Exception as exc:  # a malformed pickle can fail in many ways; all mean "bad file"
        raise DataError(f"cannot read {file} as a CIFAR pickle ({_one_line(exc)}); download the dataset again") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{file} holds a {type(obj).__name__}, expected a dict as in the CIFAR python version")
    # Python 3 pickles have bytes keys, Python 2 ones (read as latin1) str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _load_cifar(name: str, path: str | None) -> _Raw:
    info = _CIFAR[name]
    dirs = _search_dirs(name, path, extra=(info["folder"], f"{name}/{info['folder']}"))
    folder = next((d for d in dirs if (d / info["test"][0]).is_file()), None)
    if folder is None:
        raise DataError(
            f"{info['title']} python-version files ({info['folder']}/{info['test'][0]} and the others) not found; "
            f"looked in {', '.join(map(str, dirs))}; download the python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass --data-path DIR"
        )
    meta = _unpickle_dict(folder / info["meta"])
    names = meta.get(info["names_key"])
    if not isinstance(names, list) or not names:
        raise DataError(
            f"{folder / info['meta']} lacks the list '{info['names_key']}' of class names; extract the archive again"
        )
    class_names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    train_x, train_y = _read_cifar_batches(folder, info["train"], info["labels_key"])
    test_x, test_y = _read_cifar_batches(folder, info["test"], info["labels_key"])
    return _Raw(name, train_x, train_y, test_x, test_y, class_names, str(folder))


def _read_cifar_batches(folder: Path, batch_names, labels_key: str):
    xs, ys = [], []
    for batch_name in batch_names:
        file = folder / batch_name
        batch = _unpickle_dict(file)
        data, labels = batch.get("data"), batch.get(labels_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{file}: 'data' must be a uint8 array of shape (N, 3072); download the dataset again")
        try:
            y = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{file}: '{labels_key}' must be a list of integers; download the dataset again") from exc
        if y.shape != (len(data),):
            raise DataError(f"{file} has {len(data)} images but {y.size} '{labels_key}'; download the dataset again")
        xs.append(data.reshape(-1, 3, 32, 32))  # each row: 1024 red, 1024 green, 1024 blue, row-major
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------------------
# Image folders: path/train/<class>/*.png and path/test/<class>/* (or val/)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = ("1", "L", "LA")


def _load_imagefolder(path: str) -> _Raw:
    root = Path(path).expanduser()
    layout = f"{root}/train/<class>/*.png and {root}/test/<class>/*.png (or val/ for test)"
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise DataError(
            f"image folder dataset not found: expected {layout}; create that layout or pass --data-path DIR"
        )
    class_names = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    if not class_names:
        raise DataError(f"{train_dir} has no class folders; expected {layout}")
    train_files = _list_images(train_dir, class_names, layout)
    test_files = _list_images(test_dir, class_names, layout)

    from PIL import Image  # lazily: only this loader needs PIL

    # Opening reads only the header, so this first pass over all files is cheap.
    modes = set()
    for file, _ in train_files + test_files:
        with _open_image(Image, file) as image:
            modes.add(image.mode)
    mode = "L" if modes <= set(_GRAY_MODES) else "RGB"
    with _open_image(Image, train_files[0][0]) as first:
        size = first.size
    train_x = _read_images(Image, train_files, mode, size)
    test_x = _read_images(Image, test_files, mode, size)
    train_y = np.array([label for _, label in train_files], dtype=np.int64)
    test_y = np.array([label for _, label in test_files], dtype=np.int64)
    return _Raw("imagefolder", train_x, train_y, test_x, test_y, class_names, str(root))


def _list_images(split_dir: Path, class_names: tuple[str, ...], layout: str) -> list[tuple[Path, int]]:
    found = []
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        if class_dir.name not in class_names:
            raise DataError(f"{class_dir} is a class that {split_dir.parent / 'train'} lacks; expected {layout}")
        label = class_names.index(class_dir.name)
        # is_file: regular files (or links to them) only; a FIFO named x.png would block the reader
        found += [
            (f, label) for f in sorted(class_dir.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file()
        ]
    if not found:
        raise DataError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {split_dir}; expected {layout}")
    return found


def _open_image(Image, file: Path):
    try:
        return Image.open(file)
    except Exception as exc:  # PIL raises several types for unreadable files
        raise DataError(f"cannot read image {file} ({_one_line(exc)}); replace or remove it") from exc


def _read_images(Image, files_and_labels, mode: str, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    channels = 1 if mode == "L" else 3
    x = np.empty((len(files_and_labels), channels, height, width), dtype=np.uint8)
    for i, (file, _) in enumerate(files_and_labels):
        with _open_image(Image, file) as image:
            if image.size != size:
                raise DataError(
                    f"{file} is {image.size[0]}x{image.size[1]} but the first image is {width}x{height}; "
                    "all images must share one size, so resize them first"
                )
            try:
                pixels = np.asarray(image.convert(mode))
            except Exception as exc:  # truncated files fail only when the pixels are decoded
                raise DataError(f"cannot decode image {file} ({_one_line(exc)}); replace or remove it") from exc
        x[i] = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
    return x


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
