"""FORMATS, the registry of dataset formats (data.name), and the error for a name that is
neither a registered format nor a path. The built-in formats register in their own modules,
which edgekd.data.formats imports: see its docstring for the shapes of a loader and a lister."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgekd.data.base import RawArrays
from edgekd.data.image_files import FileDataset
from edgekd.errors import ConfigError, DataError
from edgekd.registry import Registry

Loader = Callable[[str, str | None], RawArrays]  # loader(name, path) -> RawArrays


@dataclass(frozen=True)
class FileLister:
    """A format of image files, registered instead of a loader: `list(name, path, skip_bad)`
    returns the FileDataset (files and labels, nothing decoded), so training streams the files
    when it should and reads them into arrays when it should (edgekd.data.image_file_splits).
    `skip_bad` is data.skip_bad: leave out what would otherwise be refused (an empty class folder)."""

    list: Callable[[str, str | None, bool], FileDataset]


FORMATS: Registry[Loader | FileLister] = Registry("dataset")

PATH_HINT = "or a path to an .npz file, an IDX folder, an image folder or a .csv/.jsonl manifest"


class UnknownDataset(ConfigError, DataError):
    """data.name is neither a registered format nor an existing path: a recipe error
    (ConfigError) that is also a dataset that cannot be found (DataError)."""


def unknown_dataset(name: str) -> UnknownDataset:
    """The one-line error for an unknown data.name; it lists the registered formats."""
    return UnknownDataset(f"unknown {FORMATS.kind} '{name}'; available: {', '.join(FORMATS.names())} ({PATH_HINT})")
