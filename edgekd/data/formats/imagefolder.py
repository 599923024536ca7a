"""The `imagefolder` format: train/<class>/* and test/<class>/* (or val/) under data.path, or
<class>/* alone (split into train and test: edgekd.data.class_folders), in JPEG, PNG, WebP or BMP, any mode PIL reads (grey, RGB, RGBA, palette, CMYK, 16-bit).

Registered as a lister (FileLister): it lists the files, and edgekd.data.image_file_splits streams
them (a recipe with data.image_size) or decodes them into one uint8 array (grey if all images
are, else RGB, all of one size: load_arrays, `edgekd bench --data`). Listing, checking and
decoding live in edgekd.data.image_files."""

from __future__ import annotations

from edgekd.data.base import need_path
from edgekd.data.class_folders import list_any_image_folder
from edgekd.data.formats.registry import FORMATS, FileLister
from edgekd.data.image_files import FileDataset

IMAGEFOLDER_HINT = "DIR (with <class>/*.png, or train/<class>/*.png and test/<class>/*.png)"


def list_imagefolder_format(name: str, path: str | None, skip_bad: bool) -> FileDataset:
    """The image folder at data.path, listed; with data.skip_bad, empty class folders are left out."""
    return list_any_image_folder(need_path(name, path, IMAGEFOLDER_HINT), skip_empty=skip_bad)


FORMATS.register("imagefolder", FileLister(list_imagefolder_format))
