"""Datasets of image files (an image folder, a manifest): their file lists, the check of every
file before training, and decoding. The one decoder and the one class-folder lister of edgekd:
training, evaluation, export and `edgekd bench --data` (edgekd.runtime.eval_folder) all use them.

numpy and PIL only (PIL imported where an image is opened; no torch). A format lists its files as a
FileDataset (paths and labels, nothing decoded); `scan` then opens and decodes every file
once, in a thread pool whose decodes are bounded by the bytes they hold (edgekd.data.decodegate),
and sorts out the bad ones (unreadable, truncated or corrupt): a DataError naming the first, or,
with data.skip_bad, a list to skip and count. An image smaller than the crop is no bad one: it is
resized up, as torchvision's Resize does, and counted (`count_upscaled`). JPEGs are decoded at
1/8 scale for the check (libjpeg still reads every byte, so a truncated file fails), which keeps
the check of 50,000 files to seconds.

JPEG draft scaling (libjpeg's DCT scaling, a large JPEG decoded at 1/2, 1/4 or 1/8 size) is used
for training's augmentation only (`decode` with a resize): a random crop is no contract, and
decoding a 12-megapixel photo at 1/8 is ten times faster. The evaluation geometry
(`decode_fitted`: resize the shorter side, center crop) decodes every image whole, for the val,
test, calibration and eval.npz images of training and for bench alike: the numbers training
reports are the ones bench and any deployment that follows the model's `edgekd.preprocess`
metadata (which names no DCT scaling) get from the same files.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgekd.data.base import MIN_IMAGE_SIDE
from edgekd.data.decodegate import DECODE_GATE, TRAINING_HINT
from edgekd.data.preprocess import GRAY_MODES, decode_bytes, fit_image, to_chw, to_mode
from edgekd.errors import DataError, joined_lines
from edgekd.io.regular import not_regular, open_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_FILES = 10**8
CHUNK = 256  # files per task of the thread pool
FIRST_NAMED = 5  # skipped files a skip summary names


@dataclass(frozen=True, eq=False)
class FileSplit:
    """One split of a file dataset: paths and int64 labels."""

    files: list
    labels: np.ndarray

    def take(self, index) -> FileSplit:
        index = np.asarray(index, dtype=np.int64)
        return FileSplit([self.files[i] for i in index], self.labels[index])

    def __len__(self) -> int:
        return len(self.files)


class FileDataset(NamedTuple):
    """What a file format lists: train and test splits, class names, where it came from, and
    `skipped`: entries already left out (empty class folders with data.skip_bad). `split`: how
    the test split was drawn when the format drew it (class folders without train/ and test/),
    for the data stage's record."""

    name: str
    train: FileSplit
    test: FileSplit
    class_names: tuple
    source: str
    skipped: dict
    split: dict | None = None


class Scan(NamedTuple):
    """`scan`'s answer: the files that passed (positions into the list), their modes and
    sizes (width, height), and the bad ones as {reason: [file, ...]}."""

    good: np.ndarray
    modes: set
    sizes: np.ndarray
    bad: dict


class Remedy(NamedTuple):
    """What a decode error tells the user to do: with a file that cannot be read, and with one
    too large to decode within the memory budget."""

    unreadable: str
    too_large: str


TRAINING_REMEDY = Remedy("replace or remove it (or set data.skip_bad: true)", TRAINING_HINT)


def file_split(files_and_labels: list) -> FileSplit:
    return FileSplit([str(f) for f, _ in files_and_labels], np.array([y for _, y in files_and_labels], dtype=np.int64))


def open_image(path: str, remedy: Remedy = TRAINING_REMEDY):
    """The PIL image at `path` (header read only); DataError when it cannot be opened."""
    from PIL import Image

    kind = not_regular(path)
    if kind not in (None, "missing"):  # a FIFO would block the decoder (a file swapped after the scan)
        raise DataError(f"cannot read image {path}: it is {kind}, not an image file; {remedy.unreadable}")
    try:
        return Image.open(path)
    except Exception as exc:  # PIL raises several types for unreadable files (and DecompressionBombError)
        check_png_header(Path(path))  # PIL cannot open a 0x0 PNG: say why
        raise DataError(f"cannot read image {path} ({joined_lines(exc)}); {remedy.unreadable}") from exc


def check_png_header(file: Path) -> None:
    """DataError with the minimum size when `file` is a PNG whose header declares a side < MIN_IMAGE_SIDE."""
    try:
        with open_regular(file, OSError) as f:
            head = f.read(24)
    except OSError:
        return
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if min(width, height) < MIN_IMAGE_SIDE:
            raise DataError(f"{file}: images are {width}x{height} pixels; the minimum size is "
                            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; use larger images")


def decode(path: str, mode: str, resize: int | None = None, finish=None, *, draft: bool = True,
           remedy: Remedy = TRAINING_REMEDY):
    """The image at `path` decoded and converted to `mode` ('L' or 'RGB'), then `finish(image)`
    if given, admitted by the decode gate for what that holds (edgekd.data.decodegate). With
    `resize` and `draft` (training's augmentation), a large JPEG is decoded at the smallest
    1/2^k scale whose shorter side is still at least `resize` (libjpeg's DCT scaling, much
    faster); without, whole."""
    with open_image(path, remedy) as image:
        if draft and resize is not None and image.format == "JPEG":
            short = min(image.size)
            scale = 1
            while scale < 8 and short // (scale * 2) >= resize:
                scale *= 2
            if scale > 1:
                image.draft(image.mode, (image.width // scale, image.height // scale))
        cost = decode_bytes(image.mode, image.width, image.height, mode, resize if finish else None)
        with DECODE_GATE.admit(cost, path, remedy.too_large):
            try:
                image.load()
                converted = to_mode(image, mode)
            except Exception as exc:  # truncated and corrupt files fail only when the pixels are decoded
                raise DataError(f"cannot decode image {path} ({joined_lines(exc)}); {remedy.unreadable}") from exc
            return converted if finish is None else finish(converted)


def decode_fitted(path: str, mode: str, resize: int | None, crop: tuple | None,
                  remedy: Remedy = TRAINING_REMEDY) -> np.ndarray:
    """uint8 (C, H, W): the evaluation geometry, the same for training and bench: decoded whole
    (no draft scaling), converted, resized and center-cropped (edgekd.data.preprocess.fit_image)."""
    return decode(path, mode, resize, finish=lambda image: to_chw(fit_image(image, resize, crop)), draft=False,
                  remedy=remedy)


def probe(path: str, crop: tuple | None) -> tuple:
    """(mode, width, height) of a readable, fully decodable image, else (None, reason, message)."""
    from PIL import Image

    kind = not_regular(path)
    if kind not in (None, "missing"):  # a manifest row may name a FIFO, which would block Image.open forever
        return None, "not_a_file", f"{path} is {kind}, not an image file"
    try:
        image = Image.open(path)
    except Exception as exc:  # noqa: BLE001 - PIL raises several types
        try:
            check_png_header(Path(path))
        except DataError as small:
            return None, "too_small", str(small)
        return None, "unreadable", f"cannot read image {path} ({joined_lines(exc)})"
    with image:
        width, height = image.size
        if min(width, height) < MIN_IMAGE_SIDE:
            return None, "too_small", (f"{path}: images are {width}x{height} pixels; the minimum size is "
                                       f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; use larger images")
        mode = image.mode
        if image.format == "JPEG":
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        cost = decode_bytes(image.mode, image.width, image.height, image.mode)
        too_large = DECODE_GATE.refusal(cost, path)
        if too_large is not None:  # refused before any pixel is decoded
            return None, "too_large", too_large
        try:
            with DECODE_GATE.admit(cost, path):
                image.load()
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
            return None, "corrupt", f"cannot decode image {path} ({joined_lines(exc)})"
    return mode, width, height


def thread_map(fn, items: list, workers: int) -> list:
    """[fn(item) for item in items], in a pool of `workers` threads (PIL decodes without the GIL)."""
    if workers <= 1 or len(items) <= CHUNK:
        return [fn(item) for item in items]
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(lambda chunk: [fn(item) for item in chunk], chunks)
        return [result for part in parts for result in part]


def scan(files: list, *, crop: tuple | None, workers: int) -> Scan:
    """Open and decode every file once (see `probe`). `crop` is kept for callers; images
    smaller than it are resized up, not refused (count_upscaled counts them)."""
    results = thread_map(lambda f: probe(f, crop), list(files), max(1, workers))
    good, modes, sizes, bad = [], set(), [], {}
    for i, (mode, *rest) in enumerate(results):
        if mode is None:
            bad.setdefault(rest[0], []).append((files[i], rest[1]))
        else:
            good.append(i)
            modes.add(mode)
            sizes.append(rest)
    return Scan(np.array(good, dtype=np.int64), modes, np.array(sizes, dtype=np.int64).reshape(-1, 2), bad)


def count_upscaled(sizes: np.ndarray, crop: tuple | None) -> int:
    """How many images of `sizes` ((width, height) rows) are smaller than `crop` (height,
    width): they are resized up to the model's input."""
    if crop is None or not len(sizes):
        return 0
    return int(((sizes[:, 0] < crop[1]) | (sizes[:, 1] < crop[0])).sum())


def first_bad(bad: dict) -> list:
    """The first FIRST_NAMED files of a Scan's `bad` ({reason: [(file, message)]}), as str."""
    return [str(file) for entries in bad.values() for file, _ in entries][:FIRST_NAMED]


def named_files(first: list, total: int) -> str:
    """'a.png, b.png and 3 more': the first files skipped, and how many others."""
    shown = ", ".join(str(f) for f in first[:FIRST_NAMED])
    return shown + (f" and {total - len(first[:FIRST_NAMED])} more" if total > len(first[:FIRST_NAMED]) else "")


def refuse_or_skip(found: Scan, split: FileSplit, skip_bad: bool, what: str) -> tuple[FileSplit, dict]:
    """The split without its bad files and {reason: count} when skip_bad; else the DataError of
    the first bad file (its own message, one line)."""
    if not found.bad:
        return split, {}
    if not skip_bad:
        entries = next(iter(found.bad.values()))
        total = sum(len(v) for v in found.bad.values())
        more = f" ({total - 1} more bad file(s) in the {what} split)" if total > 1 else ""
        raise DataError(f"{entries[0][1]}{more}; replace or remove it, or set data.skip_bad: true to skip bad images")
    return split.take(found.good), {reason: len(entries) for reason, entries in found.bad.items()}


def dataset_mode(modes: set, channels: int | None) -> str:
    """'L' or 'RGB': data.channels, else grey when every image is, else RGB."""
    if channels is not None:
        return "L" if channels == 1 else "RGB"
    return "L" if modes and modes <= set(GRAY_MODES) else "RGB"


def list_class_folder(split_dir: Path, class_names: tuple, layout: str, *, every_class: bool,
                      skip_empty: bool = False, ignore: tuple = ()) -> tuple[list, list]:
    """([(file, label)], [empty class folder]) of the images under split_dir/<class>/. An empty
    class folder of the train split is a DataError unless `skip_empty` (then it is listed);
    the folders named in `ignore` (classes skipped as empty) are left out."""
    found, empty = [], []
    labels = {name: i for i, name in enumerate(class_names)}
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
        if class_dir.name in ignore:
            continue
        if class_dir.name not in labels:
            raise DataError(f"{class_dir} is a class that {split_dir.parent / 'train'} lacks; expected {layout}")
        label = labels[class_dir.name]
        # is_file: regular files (or links to them) only; a FIFO named x.png would block the reader
        with os.scandir(class_dir) as entries:
            names = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        images = [(class_dir / n, label) for n in names if (class_dir / n).is_file()]
        if every_class and not images:
            if skip_empty:
                empty.append(str(class_dir))
                continue
            raise DataError(f"class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)}); an empty "
                            "folder is not a class: add its images or remove the folder (or set data.skip_bad: true)")
        found += images
        if len(found) > MAX_FILES:
            raise DataError(f"{split_dir} holds more than {MAX_FILES:,} images; split the dataset")
    return found, empty


def list_classes(root: Path, layout: str, *, every_class: bool, skip_empty: bool = False) -> tuple:
    """([(file, label)], class names, [empty class folder left out]) of root/<class>/<image>: the
    classes numbered by their folders' sorted names, as torchvision's ImageFolder numbers them.
    With `every_class` an empty class folder is a DataError, or with `skip_empty` no class
    (the others renumbered without it); without, it keeps its index. DataError when root has no
    class folders or no images at all."""
    from edgekd.data.base import MAX_CLASSES

    class_names = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not class_names:
        raise DataError(f"{root} has no class folders; expected {layout}")
    if len(class_names) > MAX_CLASSES:
        raise DataError(f"{root} has {len(class_names):,} class folders; at most {MAX_CLASSES:,}")
    found, empty = list_class_folder(root, class_names, layout, every_class=every_class, skip_empty=skip_empty)
    if empty:
        ignore = tuple(Path(e).name for e in empty)
        class_names = tuple(n for n in class_names if n not in ignore)
        if not class_names:
            raise DataError(f"every class folder under {root} is empty; expected {layout}")
        found, _ = list_class_folder(root, class_names, layout, every_class=every_class, ignore=ignore)
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}; expected {layout}")
    return found, class_names, empty


def list_imagefolder(path: str, skip_empty: bool = False) -> FileDataset:
    """train/<class>/* and test/<class>/* (or val/) under `path`, listed, not decoded."""
    root = Path(path).expanduser()
    layout = f"{root}/train/<class>/*.png and {root}/test/<class>/*.png (or val/ for test)"
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise DataError(
            f"image folder dataset not found: expected {layout}; create that layout or pass --data-path DIR"
        )
    train, class_names, empty = list_classes(train_dir, layout, every_class=True, skip_empty=skip_empty)
    skipped = {"empty_class_folders": len(empty)} if empty else {}
    ignore = tuple(Path(e).name for e in empty)  # with skip_bad: no classes, in test/ too
    test, _ = list_class_folder(test_dir, class_names, layout, every_class=False, ignore=ignore)
    if not test:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {test_dir}; expected {layout}")
    return FileDataset("imagefolder", file_split(train), file_split(test), class_names, str(root), skipped)
