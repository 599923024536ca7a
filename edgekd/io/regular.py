"""Input files that must be regular files. A FIFO (named pipe) given as a data file, a manifest
or an image blocks its reader forever, and a device (/dev/zero, /dev/urandom) never ends: every
path edgekd reads data from is checked here before it is opened, and opened without blocking.

numpy-free and torch-free, like the rest of edgekd.io's readers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str | None:
    """None for a regular file's st_mode; else what the entry is, as words."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | Path) -> str | None:
    """None when `path` is a regular file or a link to one; else why it is not: 'missing' when
    nothing is there (or a dangling link), else what it is ('a FIFO (named pipe)', 'a folder', ...).
    Only stat is called: nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return "missing"
    return kind_of(mode)


def what_it_is(kind: str) -> str:
    """A `not_regular` answer as words for a message: 'does not exist', 'is a FIFO (named pipe), not
    a regular file', ..."""
    return "does not exist" if kind == "missing" else f"is {kind}, not a regular file"


def open_regular(path: str | Path, error) -> object:
    """`path` opened for binary reading, checked to be a regular file after it was opened (a file
    swapped for a FIFO between a check and the open does not block either: it is opened
    non-blocking). `error(kind)` builds the exception raised for anything else ('missing',
    'a FIFO (named pipe)', ...); an OSError of the open itself (permissions) propagates."""
    kind = not_regular(path)
    if kind is not None:
        raise error(kind)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise error(kind)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: blocking reads, as any other open
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
