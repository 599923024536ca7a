"""The CIFAR formats `cifar10` and `cifar100`: the "python version" pickled batches, read with
an unpickler that admits numpy arrays only, never code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from edgekd.data.base import RawArrays, search_dirs
from edgekd.data.formats.registry import FORMATS
from edgekd.errors import DataError, joined_lines
from edgekd.io.regular import open_regular, what_it_is

CIFAR_LAYOUTS = {
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
    def not_a_file(kind: str) -> DataError:  # a FIFO or device would block or never end: never opened blocking
        if kind == "missing":
            return DataError(f"{file} is missing; the CIFAR folder must hold every batch file, so extract the "
                             "archive again")
        return DataError(f"{file} {what_it_is(kind)}; the CIFAR folder must hold the batch files themselves")

    try:
        with open_regular(file, not_a_file) as f:
            obj = _RestrictedUnpickler(f, file).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise not_a_file("missing") from exc
    except Exception as exc:  # a malformed pickle can fail in many ways; all mean "bad file"
        raise DataError(f"cannot read {file} as a CIFAR pickle ({joined_lines(exc)}); download the dataset again") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{file} holds a {type(obj).__name__}, expected a dict as in the CIFAR python version")
    # Python 3 pickles have bytes keys, Python 2 ones (read as latin1) str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@FORMATS.register("cifar100")
@FORMATS.register("cifar10")
def load_cifar(name: str, path: str | None) -> RawArrays:
    """The batches of CIFAR_LAYOUTS[name], found in data.path (or a subfolder), $EDGEKD_DATA or the system folder."""
    info = CIFAR_LAYOUTS[name]
    dirs = search_dirs(name, path, extra=(info["folder"], f"{name}/{info['folder']}"))
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
    return RawArrays(name, train_x, train_y, test_x, test_y, class_names, str(folder))


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
