"""Rebuild edgekd/assets/fashion_mnist_subset.npz from the official Fashion-MNIST files.

    apt-get install dataset-fashion-mnist
    python scripts/make_embedded_subset.py

Takes a class-balanced, seeded subset (1,000 train and 200 test images per class) and
stores the source indices into the official files, so every image can be traced back.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing edgekd

from edgekd.data.formats.idx import FASHION_MNIST_CLASSES, IDX_FILES, read_idx  # noqa: E402


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """per_class random indices of every class, sorted so the subset keeps the official order."""
    picked = []
    for label in range(len(FASHION_MNIST_CLASSES)):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise SystemExit(f"class {label} has only {len(members)} images, fewer than {per_class}")
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def save_npz(out: Path, arrays: dict) -> None:
    """np.savez_compressed via a temp file, so an interrupted run leaves no half-written asset.

    zipfile stamps each entry 1980-01-01, so a rebuild from the same files has the same sha256.
    """
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder with the four .gz files")
    parser.add_argument("--out", default=str(REPO / "edgekd" / "assets" / "fashion_mnist_subset.npz"))
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = Path(args.source)
    official = {key: read_idx(source / f"{stem}.gz") for key, stem in IDX_FILES.items()}
    rng = np.random.default_rng(args.seed)
    train_index = balanced_indices(official["train_y"], args.train_per_class, rng)
    test_index = balanced_indices(official["test_y"], args.test_per_class, rng)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(
        out,
        dict(
            train_x=official["train_x"][train_index],  # uint8 (N, 28, 28)
            train_y=official["train_y"][train_index],
            test_x=official["test_x"][test_index],
            test_y=official["test_y"][test_index],
            class_names=np.array(FASHION_MNIST_CLASSES, dtype=str),
            train_index=train_index.astype(np.int64),  # rows of train-images-idx3-ubyte
            test_index=test_index.astype(np.int64),  # rows of t10k-images-idx3-ubyte
        ),
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out}: {len(train_index)} train, {len(test_index)} test, {out.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
