"""The bound on what edgekd allocates to feed a model (a feed, a padded batch, synthetic rows),
checked before the allocation: below both runtime.inputs and runtime.preprocessing, which use it.

numpy only."""

from __future__ import annotations

import numpy as np

from edgekd.errors import ModelFileError
from edgekd.io.membudget import size_text

# The largest input edgekd builds for one run (a feed, a padded batch, synthetic rows): this
# many bytes, or half of the memory available now if that is less (feed_bytes_limit).
MAX_FEED_BYTES = 2 * 1024**3


def feed_bytes_limit() -> int:
    """MAX_FEED_BYTES, or half of the memory available now if that is less."""
    from edgekd.runtime.machine import available_memory_bytes

    available = available_memory_bytes()
    return MAX_FEED_BYTES if available is None else max(1, min(MAX_FEED_BYTES, available // 2))


def check_feed_size(shape, dtype, what: str, hint: str, error=ModelFileError) -> None:
    """Raise `error` (a BadInput: exit 2) before anything of `shape` and `dtype` is allocated
    when it would exceed feed_bytes_limit(); `what` names it, `hint` says what to change."""
    count = 1
    for d in shape:
        count *= max(int(d), 0)
    nbytes, limit = count * np.dtype(dtype).itemsize, feed_bytes_limit()
    if nbytes > limit:
        dims = " x ".join(str(int(d)) for d in shape)
        raise error(f"{what} would be {dims} {np.dtype(dtype).name} = {size_text(nbytes)}, more than the limit of "
                    f"{size_text(limit)} (the smaller of 2 GiB and half of the available memory); {hint}")
