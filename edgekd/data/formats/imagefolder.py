"""The `imagefolder` format: train/<class>/*.png and test/<class>/*.png (or val/) under
data.path, decoded with PIL (imported only here, only when used) into one uint8 array."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.base import MAX_CLASSES, RawArrays, check_image_size, check_memory, need_path
from edgekd.data.formats.registry import FORMATS
from edgekd.errors import DataError, joined_lines

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


_GRAY_MODES = ("1", "L", "LA")


@FORMATS.register("imagefolder")
def load_imagefolder_format(name: str, path: str | None) -> RawArrays:
    """The image folder at data.path."""
    return load_imagefolder(need_path(name, path, "DIR (with train/<class>/*.png and test/<class>/*.png)"))


def load_imagefolder(path: str) -> RawArrays:
    """Images in path/train/<class>/ and path/test/<class>/ (or val/), gray if all are, else RGB."""
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
    if len(class_names) > MAX_CLASSES:
        raise DataError(f"{train_dir} has {len(class_names):,} class folders; at most {MAX_CLASSES:,}")
    train_files = _list_images(train_dir, class_names, layout, every_class=True)
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
    check_image_size(size[1], size[0], str(train_files[0][0]))
    channels = 1 if mode == "L" else 3
    check_memory((len(train_files) + len(test_files)) * channels * size[0] * size[1],
                 f"{root}: {len(train_files) + len(test_files):,} images of {size[0]}x{size[1]}x{channels}",
                 "use fewer or smaller images")
    train_x = _read_images(Image, train_files, mode, size)
    test_x = _read_images(Image, test_files, mode, size)
    train_y = np.array([label for _, label in train_files], dtype=np.int64)
    test_y = np.array([label for _, label in test_files], dtype=np.int64)
    return RawArrays("imagefolder", train_x, train_y, test_x, test_y, class_names, str(root))


def _list_images(split_dir: Path, class_names: tuple[str, ...], layout: str,
                 every_class: bool = False) -> list[tuple[Path, int]]:
    """(file, label) of every image under split_dir/<class>/. `every_class` (train): a class
    folder without images is an error, not a class no image can ever teach."""
    found = []
    labels = {name: i for i, name in enumerate(class_names)}
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        if class_dir.name not in labels:
            raise DataError(f"{class_dir} is a class that {split_dir.parent / 'train'} lacks; expected {layout}")
        label = labels[class_dir.name]
        # is_file: regular files (or links to them) only; a FIFO named x.png would block the reader
        images = [
            (f, label) for f in sorted(class_dir.iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file()
        ]
        if every_class and not images:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(_IMAGE_SUFFIXES)}); an empty "
                            "folder is not a class: add its images or remove the folder")
        found += images
    if not found:
        raise DataError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {split_dir}; expected {layout}")
    return found


def _open_image(Image, file: Path):
    try:
        return Image.open(file)
    except Exception as exc:  # PIL raises several types for unreadable files
        _check_png_size(file)  # PIL cannot open a 0x0 PNG: say why
        raise DataError(f"cannot read image {file} ({joined_lines(exc)}); replace or remove it") from exc


def _check_png_size(file: Path) -> None:
    """DataError with the minimum size when `file` is a PNG whose header declares a side < MIN_IMAGE_SIDE."""
    try:
        with open(file, "rb") as f:
            head = f.read(24)
    except OSError:
        return
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        check_image_size(int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"), str(file))


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
                raise DataError(f"cannot decode image {file} ({joined_lines(exc)}); replace or remove it") from exc
        x[i] = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
    return x
