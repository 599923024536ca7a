"""Progress bars, shown only on a terminal: every tqdm bar of edgekd is made here.

A bar redraws itself with `\\r`; in a log file (stderr redirected, a CI job, a notebook's
captured output) that is one line of every step's update. There the training stages log one
line per epoch instead (edgekd.pipeline.epoch_log). Importing this module imports nothing
heavy; tqdm is optional on devices (bench then shows no bar)."""

from __future__ import annotations

import sys


def on_terminal() -> bool:
    """Whether stderr, where bars draw, is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar over `iterable` (or for manual `update`s with `total=`), disabled unless
    `enabled` (the user's --no-progress / --quiet) and stderr is a terminal. Without tqdm an
    iterable comes back as it is."""
    shown = enabled and on_terminal()
    if iterable is not None and not shown:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional on devices: no bar
        if iterable is None:
            raise
        return iterable
    return tqdm(iterable, disable=not shown, **kwargs)
