"""Decoding threads bounded by the bytes they hold, not by their count.

An image is decoded whole: a PNG of 0.7 MB just under Pillow's bomb limit decodes to
hundreds of MB, so a pool of one thread per CPU holds that many times as much, and more on a
machine with more cores. Every whole decode of edgekd (data/image_files.py, training's and bench's)
reads the image's header first (PIL's lazy open: nothing decoded), estimates what decoding,
converting and resizing it holds (edgekd.data.preprocess.decode_bytes), and enters the one
gate of the process:

    with DECODE_GATE.admit(nbytes, path):
        image.load() ...

The gate admits a decode while the bytes of the decodes in flight stay within SHARE of the
memory budget (edgekd.io.membudget.memory_budget()); one decode alone is always admitted
when nothing else is in flight, so a large image waits for the others instead of failing.
An image larger than the whole budget is refused (a DataError naming it: skipped with
data.skip_bad) before any of its pixels are decoded. `peak` is the most bytes ever admitted
at once (tests read it). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from edgekd.errors import DataError
from edgekd.io.membudget import memory_budget, over_budget

SHARE = 0.5  # of the memory budget, for the decodes in flight together (their results need room too)
TRAINING_HINT = "use smaller images (or set data.skip_bad: true to skip this one)"
REFRESH_SECONDS = 1.0  # the budget is read again at most this often, and only when nothing is in flight


class DecodeGate:
    def __init__(self):
        self._cond = threading.Condition()
        self.in_flight = 0
        self.peak = 0
        self._budget = None
        self._read_at = 0.0

    def budget(self) -> int:
        """The memory budget, re-read when it is stale and no decode of ours is in flight (the
        decodes in flight would count against themselves)."""
        with self._cond:
            stale = self._budget is None or time.monotonic() - self._read_at > REFRESH_SECONDS
            if stale and self.in_flight == 0:
                self._budget, self._read_at = memory_budget(), time.monotonic()
            return self._budget

    def refusal(self, nbytes: int, what: str, hint: str = TRAINING_HINT) -> str | None:
        """The reason to refuse decoding `what` (one image of `nbytes`): over the whole budget."""
        return over_budget(nbytes, f"decoding {what} whole", hint, budget=self.budget())

    @contextlib.contextmanager
    def admit(self, nbytes: int, what: str, hint: str = TRAINING_HINT):
        """Hold `nbytes` of the gate while the block decodes `what`; waits while the decodes in
        flight would exceed SHARE of the budget; DataError (with `hint`) when `nbytes` alone
        exceed it all."""
        reason = self.refusal(nbytes, what, hint)
        if reason is not None:
            raise DataError(reason)
        share = int(self.budget() * SHARE)
        with self._cond:
            while self.in_flight > 0 and self.in_flight + nbytes > share:
                self._cond.wait()
            self.in_flight += nbytes
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= nbytes
                self._cond.notify_all()

    def reset(self) -> None:
        """A fresh gate state: after a fork (a thread of the parent may have held it) and in tests."""
        self._cond = threading.Condition()
        self.in_flight = self.peak = 0
        self._budget = None


DECODE_GATE = DecodeGate()

if hasattr(os, "register_at_fork"):  # DataLoader workers fork: the parent's threads do not come along
    os.register_at_fork(after_in_child=DECODE_GATE.reset)
