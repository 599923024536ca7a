"""Keeping the DataLoader workers small.

A worker is a fork of the training process. Linux copies the page tables of the parent's
private memory into the child, so every resident private page of the parent at the moment
of the fork counts in the worker's RSS too (shared copy-on-write, but counted once per
process). Two things keep that small:

- `shared_empty`: the bounded image sets held in memory (val, calibration, test) live in a
  shared anonymous mapping, which a fork does not copy: a worker that never touches them
  does not count them;
- `release_free_memory`: before the workers fork, memory that the allocator holds free (the
  previous epoch's activations) goes back to the OS (glibc's malloc_trim), so the parent and
  the forks count only what is in use.

numpy only; malloc_trim is looked up with ctypes and skipped where libc lacks it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap

import numpy as np

_LIBC = None


def shared_empty(shape, dtype=np.uint8) -> np.ndarray:
    """An uninitialized writable array in a shared anonymous mapping (see the module's docstring)."""
    shape = tuple(int(d) for d in shape)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


def shared_copy(x: np.ndarray) -> np.ndarray:
    out = shared_empty(x.shape, x.dtype)
    out[...] = x
    return out


def release_free_memory() -> None:
    """Collect garbage and return the allocator's free pages to the OS (glibc malloc_trim)."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - AttributeError where libc has no malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)
