"""The evaluation geometry, shared by training and the device: resize the shorter side, then
center-crop to the model's input; and the colour conversion to grey or RGB.

numpy and PIL only (no torch), so `edgekd bench` applies exactly what training applied. The
arithmetic is torchvision.transforms.v2's on PIL images (Resize(shorter side, bilinear) then
CenterCrop): the output sizes and crop offsets are computed the same way and the pixels come
from the same PIL call, so the results are identical (tests/data check it).

    fit_image(image, resize=256, crop=(224, 224))      # a PIL image
    fit_array(x_uint8_nchw, resize=256, crop=(224, 224))  # uint8 (N, C, 224, 224)

Memory is estimated before it is used: decode_bytes() is what decoding, converting and
resizing one image holds at once (what the decode gate admits, edgekd.data.decodegate), and
check_resize() refuses a resize side that no image could be resized to within the memory
budget (a crop fraction of 0.0001 makes a 224 crop a shorter side of 2,240,000 pixels).

What a model was trained with travels in its ONNX metadata as `edgekd.preprocess`
(preprocess_metadata), and eval.npz holds images already at the model's input size.
"""

from __future__ import annotations

import json

import numpy as np

INTERPOLATION = "bilinear"
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # images with one channel of values


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to `shorter` (torchvision's rounding)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter, int(shorter * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def pixel_bytes(mode: str) -> int:
    """Bytes per pixel of a PIL image in `mode` as PIL stores it (RGB takes 4, like RGBA)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


CONVERT_FLOAT_BYTES = 26  # to_mode of 16-bit and float grey: a uint8 view, float64 values, rint and clip copies


def decode_bytes(source_mode: str, width: int, height: int, mode: str, resize: int | None = None) -> int:
    """What one image (`source_mode`, width x height) holds at once while it is decoded whole,
    converted to `mode` (to_mode) and its shorter side resized to `resize` (fit_image)."""
    pixels = int(width) * int(height)
    total = pixels * pixel_bytes(source_mode)
    if source_mode != mode:
        wide = source_mode.startswith("I") or source_mode == "F"
        total += pixels * (CONVERT_FLOAT_BYTES if wide else 4 + pixel_bytes(mode))  # P with transparency: via RGBA
    if resize is not None:
        new_h, new_w = resized_size(int(height), int(width), resize)
        total += new_h * new_w * pixel_bytes(mode)
    return total


def check_resize(resize: int | None, channels: int | None, setting: str, error=None) -> None:
    """`error` (ConfigError by default; exit 2) when even a square image, whose shorter side is
    its longer one, resized to a shorter side of `resize` would not fit the memory budget:
    checked where the resize side is computed from a crop fraction, before any image."""
    from edgekd.errors import ConfigError
    from edgekd.io.membudget import check_memory

    if resize is None:
        return
    mode = "L" if channels == 1 else "RGB"
    check_memory(int(resize) ** 2 * pixel_bytes(mode), f"resizing the images to a shorter side of {int(resize):,} "
                 f"pixels (the crop / {setting})", f"raise {setting} (0.875: a 224 crop from a shorter side of 256)",
                 error=error or ConfigError)


def crop_box(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the center crop, as torchvision places it."""
    top = int(round((height - crop[0]) / 2.0))
    left = int(round((width - crop[1]) / 2.0))
    return left, top, left + crop[1], top + crop[0]


LARGE_RESIZE_PIXELS = 1 << 24  # below this a resize is not worth reading the memory budget for


def fit_image(image, resize: int | None, crop: tuple[int, int] | None):
    """A PIL image resized (shorter side to `resize`, bilinear with antialiasing) and
    center-cropped to `crop` (height, width); None skips that step. The image must be at
    least as large as the crop after resizing (the data loaders refuse smaller ones)."""
    from PIL import Image

    if resize is not None:
        h, w = resized_size(image.height, image.width, resize)
        if h * w > LARGE_RESIZE_PIXELS:  # a long thin image: its longer side grows as much
            from edgekd.errors import DataError
            from edgekd.io.membudget import check_memory

            check_memory(h * w * pixel_bytes(image.mode), f"resizing a {image.width}x{image.height} image to {w}x{h}",
                         "use images closer to square, or raise the crop fraction", error=DataError)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), resample=Image.Resampling.BILINEAR)
    if crop is not None and (image.height, image.width) != tuple(crop):
        image = image.crop(crop_box(image.height, image.width, crop))
    return image


def to_mode(image, mode: str):
    """A decoded PIL image in `mode` ('L' or 'RGB'): 16-bit and float grey images are scaled
    to 8 bits (PIL's own conversion clips them), palettes with transparency go through RGBA,
    CMYK and the rest through PIL's convert."""
    from PIL import Image

    if image.mode == mode:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values.astype(np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        return image if mode == "L" else image.convert(mode)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert(mode)


def to_chw(image) -> np.ndarray:
    """A PIL 'L' or 'RGB' image as uint8 (C, H, W)."""
    pixels = np.asarray(image, dtype=np.uint8)  # read-only: the copies below are writable
    return np.array(pixels[None]) if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def fit_array(x: np.ndarray, resize: int | None, crop: tuple[int, int] | None) -> np.ndarray:
    """uint8 (N, C, H, W) images through fit_image, channel by channel (any channel count;
    PIL resamples each band alike): uint8 (N, C, crop height, crop width)."""
    from PIL import Image

    x = np.asarray(x)
    if crop is None or (x.shape[2:] == tuple(crop) and resize is None):
        return x
    n, c = x.shape[:2]
    out = np.empty((n, c, *crop), dtype=np.uint8)
    for i in range(n):
        for j in range(c):
            out[i, j] = np.asarray(fit_image(Image.fromarray(np.ascontiguousarray(x[i, j]), "L"), resize, crop))
    return out


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, C, H, W) with C in (1, 3) as grey (PIL's luma: L = R*299/1000 + G*587/1000 +
    B*114/1000, rounded as PIL rounds) or RGB (grey repeated)."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if have == 3 and channels == 1:
        r, g, b = (x[:, i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]
    raise ValueError(f"cannot convert {have} channels to {channels}")


def preprocess_metadata(*, channels: int, height: int, width: int, resize: int | None, mean, std) -> str:
    """The JSON of the `edgekd.preprocess` metadata entry: every step from a decoded image to
    the model's input, in order."""
    return json.dumps({
        "color": "L" if channels == 1 else "RGB" if channels == 3 else f"{channels} channels",
        "resize_shorter": resize,
        "interpolation": INTERPOLATION if resize is not None else None,
        "center_crop": [height, width],
        "scale": "x / 255",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "layout": "NCHW",
    })
