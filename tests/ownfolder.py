"""Image folders as users have them, for the tests of issue 28's own-data path: `<class>/`
folders of small colour PNGs made from the embedded Fashion-MNIST subset (upscaled from 28x28
and tinted per class, so the classes stay learnable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINTS = ((1.0, 0.6, 0.6), (0.6, 1.0, 0.6), (0.6, 0.6, 1.0), (1.0, 1.0, 0.6))


def write_class_folders(root: Path, classes: int = 3, per_class: int = 40, size: int = 64) -> list:
    """root/class_k/NNN.png, `per_class` RGB images of `size` x `size` pixels for each of the
    first `classes` Fashion-MNIST classes; returns the class names in sorted order."""
    from PIL import Image

    from edgekd.data.splits import load_arrays

    x, y, _, _, names = load_arrays("fashion-mnist-subset")
    folders = []
    for label in range(classes):
        folder = root / names[label].replace("/", "-").replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder.name)
        tint = np.array(TINTS[label % len(TINTS)], dtype=np.float32)
        for i, index in enumerate(np.flatnonzero(y == label)[:per_class]):
            grey = Image.fromarray(x[index, 0]).resize((size, size), Image.Resampling.BILINEAR)
            rgb = (np.asarray(grey, dtype=np.float32)[..., None] * tint).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(folder / f"{i:03d}.png")
    return sorted(folders)
