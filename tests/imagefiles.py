"""Image files for the tests: tiny image folders and manifests written with PIL.

The images are drawn so that a small model can learn them: class k is a bright square in
corner k on a noisy background (the corner survives resizing, cropping and flipping well
enough for a few epochs), in mixed sizes, formats and modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FORMATS_AND_MODES = [  # (suffix, PIL format, mode written)
    (".png", "PNG", "RGB"), (".jpg", "JPEG", "L"), (".webp", "WEBP", "RGB"), (".bmp", "BMP", "RGB"),
    (".png", "PNG", "RGBA"), (".png", "PNG", "P"), (".jpg", "JPEG", "CMYK"), (".png", "PNG", "L"),
]
CLASSES = ("circle", "square", "star")


def draw(label: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 (h, w, 3) picture of class `label`."""
    h, w = size
    x = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    qh, qw = h // 2, w // 2
    top, left = [(0, 0), (0, qw), (qh, 0)][label % 3]
    x[top : top + qh, left : left + qw] = (200 + 20 * label, 220 - 30 * label, 180)
    return x


def save(path: Path, rgb: np.ndarray, fmt: str, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb, "RGB")
    if mode == "P":
        image = image.quantize(64)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)


def write_folder(root: Path, per_class: int = 8, test_per_class: int = 3, seed: int = 0,
                 sizes=((32, 32), (40, 36), (48, 64), (36, 44))) -> Path:
    """root/train/<class>/* and root/test/<class>/*: every format and mode of FORMATS_AND_MODES, mixed sizes."""
    rng = np.random.default_rng(seed)
    i = 0
    for split, n in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            for k in range(n):
                suffix, fmt, mode = FORMATS_AND_MODES[i % len(FORMATS_AND_MODES)]
                size = sizes[i % len(sizes)]
                save(root / split / name / f"{k:03d}{suffix}", draw(label, size, rng), fmt, mode)
                i += 1
    return root
