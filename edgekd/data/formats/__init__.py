"""Dataset formats: FORMATS maps each data.name to a loader or a lister (registry in formats/registry.py).

A loader is a function ``loader(name, path) -> RawArrays``: `name` is the name it was
registered under (one loader may serve several, as idx serves mnist and fashion-mnist),
`path` is the recipe's data.path (None when not given). It returns uint8 NCHW train and
test images, int64 labels in 0..len(class_names)-1, the class names and where they came
from; load_splits checks the arrays, then splits them. Missing or malformed files should
be a DataError with a one-line message that says how to fix them. A format of your own,
in a module named in the recipe's `plugins:` list:

    import numpy as np
    from edgekd.data.formats import FORMATS, RawArrays

    @FORMATS.register("noise")
    def load_noise(name, path):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (120, 1, 8, 8), dtype=np.uint8)
        y = np.arange(120, dtype=np.int64) % 2
        return RawArrays(name, x[:100], y[:100], x[100:], y[100:], ("even", "odd"), "generated")

and then ``data: {name: noise}``. A format of image files registers a lister instead, which
lists the files and their labels without decoding them (``lister(name, path, skip_bad) ->
FileDataset``): its images are then checked, and streamed or decoded like an image folder's.

    from edgekd.data.formats import FORMATS, FileDataset, FileLister, FileSplit

    def list_photos(name, path, skip_bad):
        train, test = ...  # (files, int64 labels) of each split
        return FileDataset(name, FileSplit(*train), FileSplit(*test), ("cat", "dog"), path, {})

    FORMATS.register("photos", FileLister(list_photos))

This package imports the built-in format modules itself, so FORMATS is complete whichever
module of edgekd imports it.
"""

from edgekd.data.base import RawArrays
from edgekd.data.formats.registry import (
    FORMATS,
    FileLister,
    Loader,
    UnknownDataset,
    unknown_dataset,
)
from edgekd.data.image_files import FileDataset, FileSplit

# The built-in formats register on import, in this order (the order of `available:` lists).
from edgekd.data.formats import npz, idx, cifar, imagefolder, manifest  # noqa: F401  isort: skip

__all__ = ["FORMATS", "FileDataset", "FileLister", "FileSplit", "Loader", "RawArrays", "UnknownDataset",
           "unknown_dataset"]
