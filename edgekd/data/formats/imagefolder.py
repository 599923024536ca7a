"""The `imagefolder` format: train/<class>/* and test/<class>/* (or val/) under data.path, in
JPEG, PNG, WebP or BMP, any mode PIL reads (grey, RGB, RGBA, palette, CMYK, 16-bit).

As a registered loader (load_arrays, `edgekd bench --data`) every image is decoded into one
uint8 array, grey if all images are, else RGB, and all must share one size. A recipe with
data.image_size streams them instead (edgekd.data.filesplits): listing, checking and
decoding live in edgekd.data.files."""

from __future__ import annotations

from edgekd.data.base import RawArrays, need_path
from edgekd.data.files import list_imagefolder
from edgekd.data.formats.registry import FORMATS


@FORMATS.register("imagefolder")
def load_imagefolder_format(name: str, path: str | None) -> RawArrays:
    """The image folder at data.path."""
    return load_imagefolder(need_path(name, path, "DIR (with train/<class>/*.png and test/<class>/*.png)"))


def load_imagefolder(path: str) -> RawArrays:
    """Images in path/train/<class>/ and path/test/<class>/ (or val/), decoded into arrays."""
    from edgekd.data.filesplits import decode_dataset

    return decode_dataset(list_imagefolder(path))
