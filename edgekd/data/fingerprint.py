"""What a run's data was, as a fingerprint that `edgekd compress --resume` compares
(edgekd.pipeline.resume.check_data). The data stage records it; a run resumed after its data
changed would train its remaining stages on other images than its finished ones, and report
on an eval.npz of the old test split.

Two parts, either may be absent:

- `files` (image folders, manifests): every listed file's path relative to the dataset's
  folder, its split, class, size and mtime, taken from the lister's own list with one stat
  per file; nothing is read, so a 70,000-file folder costs 70,000 stats. Compared before the
  files are scanned.
- `arrays` (every dataset): SHA-256 of each split's images and labels as loaded: npz, IDX and
  CIFAR files, the embedded subset, a plugin's format, data.unlabeled, and the decoded val,
  test and calibration images of streamed files. The splits are loaded before any run starts
  anyway (preflight), so this costs one hash of what is in memory.

numpy only, like the rest of edgekd.data.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

VERSION = 1
SPLITS = ("train", "val", "test", "calib")
FIRST_SHOWN = 4  # differences named in one message


def files_part(ds) -> dict:
    """The `files` part of a FileDataset (edgekd.data.image_files): its rows [path, split, class, size,
    mtime_ns] in the lister's order (size and mtime -1 for a file that cannot be stat'ed)."""
    root = ds.source if os.path.isdir(ds.source) else os.path.dirname(ds.source)
    rows = []
    for split, part in (("train", ds.train), ("test", ds.test)):
        for file, label in zip(part.files, part.labels.tolist()):
            rows.append([_relative(file, root), split, ds.class_names[label], *_size_and_mtime(file)])
    return {"format": ds.name, "source": ds.source, "classes": list(ds.class_names),
            "skipped": {str(k): v for k, v in ds.skipped.items()}, "rows": rows}


def arrays_part(splits) -> dict:
    """The `arrays` part of loaded Splits (edgekd.data.splits): the hash and count of each
    split's images and labels (train images are absent when streamed from files)."""
    spec = splits.spec
    parts = {}
    for name in SPLITS:
        x, y = getattr(splits, f"{name}_x"), getattr(splits, f"{name}_y")
        digest = hashlib.sha256()
        for array in (x, y):
            if array is not None:
                array = np.ascontiguousarray(array)
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(memoryview(array).cast("B"))
        parts[name] = {"images": len(y), "sha256": digest.hexdigest()}
    return {"source": spec.source, "classes": list(spec.class_names),
            "shape": [spec.channels, spec.height, spec.width], "splits": parts}


def digest(part: dict | None) -> str | None:
    """SHA-256 of a part's canonical JSON; None for an absent part."""
    if part is None:
        return None
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def summary(fingerprint: dict) -> dict:
    """What the data stage's record keeps (in progress.json and the report): the digests."""
    files = fingerprint.get("files")
    return {"version": VERSION, "files": len(files["rows"]) if files else None, "files_sha256": digest(files),
            "arrays_sha256": digest(fingerprint.get("arrays"))}


def files_changes(old: dict, new: dict) -> list[str]:
    """What differs between two `files` parts, as short phrases (empty when nothing does)."""
    changes = []
    word = "class folder" if new.get("format") == "imagefolder" else "class"
    old_classes, new_classes = list(old.get("classes") or []), list(new.get("classes") or [])
    changes += [f"{word} '{c}' added" for c in new_classes if c not in old_classes]
    changes += [f"{word} '{c}' removed" for c in old_classes if c not in new_classes]
    if (old.get("skipped") or {}) != (new.get("skipped") or {}):
        changes.append(f"skipped entries {new.get('skipped') or {}}, were {old.get('skipped') or {}}")
    before = {(r[1], r[0]): r for r in old.get("rows") or [] if isinstance(r, list) and len(r) == 5}
    after = {(r[1], r[0]): r for r in new.get("rows") or []}
    for split in ("train", "test"):
        where = f"{split}/" if new.get("format") == "imagefolder" else f"the {split} split"
        added = [r for key, r in after.items() if key[0] == split and key not in before]
        removed = [r for key, r in before.items() if key[0] == split and key not in after]
        changed = [r for key, r in after.items() if key[0] == split and key in before and before[key] != r]
        for rows, what in ((added, "added"), (removed, "removed"), (changed, "changed")):
            if rows:
                first = rows[0][0]
                if what == "changed" and before[(split, first)][2] != rows[0][2]:
                    first += f", class '{before[(split, first)][2]}' -> '{rows[0][2]}'"
                changes.append(f"{len(rows):,} file(s) {what} in {where} (first: {first})")
    if not changes and digest(old) != digest(new):
        changes.append("the list of files changed")
    return changes


def arrays_changes(old: dict, new: dict) -> list[str]:
    """What differs between two `arrays` parts, as short phrases (empty when nothing does)."""
    changes = []
    if old.get("classes") != new.get("classes"):
        changes.append(f"classes {_short(new.get('classes'))}, were {_short(old.get('classes'))}")
    if old.get("shape") != new.get("shape"):
        changes.append(f"images of shape {new.get('shape')}, were {old.get('shape')}")
    before, after = old.get("splits") or {}, new.get("splits") or {}
    for name in SPLITS:
        a, b = before.get(name) or {}, after.get(name) or {}
        if a.get("images") != b.get("images"):
            changes.append(f"{name} split: {b.get('images', 0):,} images, was {a.get('images', 0):,}")
        elif a.get("sha256") != b.get("sha256"):
            changes.append(f"the {name} split's images or labels differ")
    if not changes and digest(old) != digest(new):
        changes.append("the loaded images differ")
    if changes:  # where they were loaded from: an .npz file, an IDX or CIFAR folder, a manifest
        changes[0] = f"{new.get('source')}: {changes[0]}"
    return changes


def _relative(file: str, root: str) -> str:
    try:
        return os.path.relpath(file, root) if root else file
    except ValueError:  # another drive (Windows)
        return file


def _size_and_mtime(file: str) -> list[int]:
    try:
        st = os.stat(file)
    except (OSError, ValueError):
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _short(names) -> str:
    names = list(names or [])
    return str(names[:6])[:-1] + (f", ... {len(names)} in all]" if len(names) > 6 else "]")
