"""The `manifest` format: a CSV or JSONL list of image files and their labels.

    data: {name: manifest, path: data/train.csv}     # one file with a split column
    data: {name: manifest, path: data/}              # train.csv and test.csv (or .jsonl, val.*)

CSV rows are `path,label[,split]` (a header row naming the columns is optional); JSONL lines
are {"path": ..., "label": ..., "split": ...}. Labels are class names, or integers 0..K-1.
`split` is train or test (val counts as test). Paths are relative to the manifest's folder and
stay inside it: an absolute path, a `..` part, or a link that resolves outside the folder is
refused (exit 2) before anything is read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from edgekd.data.base import MAX_CLASS_NAME, generic_class_names, need_path
from edgekd.data.formats.registry import FORMATS, FileLister
from edgekd.data.image_files import MAX_FILES, FileDataset, FileSplit
from edgekd.errors import DataError
from edgekd.io.regular import not_regular, open_regular, what_it_is

SUFFIXES = (".csv", ".jsonl")
MAX_MANIFEST_BYTES = 2 * 1024**3
SPLITS = {"train": "train", "test": "test", "val": "test"}
MANIFEST_HINT = "FILE.csv|FILE.jsonl|DIR (with train.csv and test.csv)"


def list_manifest_format(name: str, path: str | None, skip_bad: bool) -> FileDataset:
    """The manifest at data.path, listed (a manifest has no class folders to skip: skip_bad unused)."""
    return list_manifest(need_path(name, path, MANIFEST_HINT))


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def list_manifest(path: str) -> FileDataset:
    """The manifest file, or the train/test manifests of a folder, as a FileDataset."""
    given = Path(path).expanduser()
    if given.is_dir():
        found = {split: _find(given, split) for split in ("train", "test", "val")}
        if found["train"] is None or (found["test"] or found["val"]) is None:
            raise DataError(f"manifest folder {given} needs train.csv and test.csv (or .jsonl; val.* for test)")
        rows = [(row[0], row[1], "train") for row in _read(found["train"])]
        rows += [(row[0], row[1], "test") for row in _read(found["test"] or found["val"])]
        root = given
    elif given.is_file():  # a regular file, or a link to one; _read checks it again as it opens it
        if not is_manifest(given):
            raise DataError(f"manifest {given} must be a .csv or .jsonl file")
        rows = _read(given)
        if any(len(row) < 3 or row[2] is None for row in rows):
            raise DataError(f"{given}: every row needs a split (train or test), or give a folder with train.csv "
                            "and test.csv")
        root = given.parent
    elif not_regular(given) != "missing":  # a FIFO would block the reader forever
        raise DataError(f"manifest {given} {what_it_is(not_regular(given))}; pass --data-path "
                        "FILE.csv|FILE.jsonl|DIR")
    else:
        raise DataError(f"manifest {given} does not exist; pass --data-path FILE.csv|FILE.jsonl|DIR")
    real_root = Path(os.path.realpath(root))
    splits = {"train": [], "test": []}
    for file, label, split in rows:
        if split not in SPLITS:
            raise DataError(f"{given}: split {split!r} of {file!r} must be train or test (or val)")
        splits[SPLITS[split]].append((_inside(root, real_root, file, given), label))
    if not splits["train"] or not splits["test"]:
        empty = "train" if not splits["train"] else "test"
        raise DataError(f"{given}: the {empty} split lists no images")
    names, labels = _labels([y for _, y in splits["train"]], [y for _, y in splits["test"]], str(given))
    n_train = len(splits["train"])
    return FileDataset("manifest", FileSplit([f for f, _ in splits["train"]], labels[:n_train]),
                       FileSplit([f for f, _ in splits["test"]], labels[n_train:]), names, str(given), {})


FORMATS.register("manifest", FileLister(list_manifest_format))


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        kind = not_regular(candidate)
        if kind is None:
            return candidate
        if kind != "missing":  # a FIFO named train.csv would block the reader forever
            raise DataError(f"manifest {candidate} {what_it_is(kind)}; make it a file of rows path,label")
    return None


def _read(path: Path) -> list[tuple]:
    """(path, label, split or None) of every row."""
    def not_a_file(kind: str) -> DataError:
        return DataError(f"manifest {path} {what_it_is(kind)}; pass a .csv or .jsonl file")

    try:
        with open_regular(path, not_a_file) as f:
            if os.fstat(f.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise DataError(f"manifest {path} is larger than {MAX_MANIFEST_BYTES >> 30} GiB; split it")
            text = f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from exc
    rows = _read_jsonl(path, text) if path.suffix.lower() == ".jsonl" else _read_csv(path, text)
    if len(rows) > MAX_FILES:
        raise DataError(f"manifest {path} lists more than {MAX_FILES:,} images; split the dataset")
    return rows


def _read_csv(path: Path, text: str) -> list[tuple]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    columns = ["path", "label", "split"]
    if rows and rows[0][0].strip().lower() == "path":
        columns = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
        if "path" not in columns or "label" not in columns:
            raise DataError(f"manifest {path}: the header must name the columns path and label (and split)")
    out = []
    for i, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise DataError(f"manifest {path}, row {i}: expected path,label[,split], got {','.join(row)[:80]!r}")
        value = dict(zip(columns, (c.strip() for c in row)))
        out.append((value.get("path", ""), value.get("label", ""), value.get("split")))
    return out


def _read_jsonl(path: Path, text: str) -> list[tuple]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise DataError(f"manifest {path}, line {i} is not JSON: {exc}") from exc
        if not isinstance(entry, dict) or "path" not in entry or "label" not in entry:
            raise DataError(f"manifest {path}, line {i}: expected an object with path and label (and split)")
        split = entry.get("split")
        out.append((entry["path"], entry["label"], None if split is None else str(split)))
    return out


def _inside(root: Path, real_root: Path, file, manifest: Path) -> str:
    """The path of `file` under root, refused (DataError) when it could point outside it."""
    if not isinstance(file, str) or not file or "\x00" in file:
        raise DataError(f"{manifest}: image path {str(file)[:80]!r} must be a non-empty relative path")
    relative = Path(file)
    if relative.is_absolute() or file.startswith(("/", "\\")) or ".." in relative.parts or "\\.." in file:
        raise DataError(f"{manifest}: image path {file[:200]!r} points outside the manifest's folder {root}; "
                        "paths must be relative to it, without '..'")
    full = root / relative
    real = Path(os.path.realpath(full))
    if real != real_root and real_root not in real.parents:
        raise DataError(f"{manifest}: image path {file[:200]!r} is a link that resolves outside the manifest's "
                        f"folder {root} (to {real}); copy the image into the folder")
    return str(full)


def _labels(train: list, test: list, source: str) -> tuple[tuple, np.ndarray]:
    """Class names and int64 labels (train then test): integer labels as they are, names sorted."""
    values = train + test
    if all(_is_int(v) for v in values):
        labels = np.array([int(v) for v in values], dtype=np.int64)
        if labels.min() < 0:
            raise DataError(f"{source}: labels must be 0 or more, found {labels.min()}")
        return generic_class_names(labels, source=source), labels
    if not all(isinstance(v, str) and v and len(v) <= MAX_CLASS_NAME for v in values):
        raise DataError(f"{source}: labels must be class names (strings of 1 to {MAX_CLASS_NAME} characters) "
                        "or integers")
    names = tuple(sorted(set(train)))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(test) - set(names))
    if unknown:
        raise DataError(f"{source}: test label {unknown[0]!r} has no train images; every class needs train images")
    return names, np.array([index[v] for v in values], dtype=np.int64)


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()
