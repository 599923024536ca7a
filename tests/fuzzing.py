"""One switch for every randomized test: reproducible in CI, exploring on demand.

- Default (CI and a plain `pytest`): the Hypothesis profile "ci" (derandomized: the same
  examples on every run, no example database, its caches under the temp folder: nothing is
  written to the checkout), and
  the hand-rolled fuzz loops draw from their fixed seed a fixed number of cases. The same
  commit gives the same outcome on every machine, however fast.
- `HYPOTHESIS_PROFILE=explore pytest tests/security -k fuzz`: Hypothesis draws new examples
  (still no database) with 10x the examples, and the hand-rolled loops take a fresh seed
  (or EDGEKD_FUZZ_SEED) and 10x the cases. The seed is printed, so a failure can be
  replayed; every failure found this way becomes a named regression test.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches (constants, unicode tables) in ./.hypothesis even without a database:
# keep them out of the checkout
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "edgekd-hypothesis")

EXPLORE = os.environ.get("HYPOTHESIS_PROFILE") == "explore"
EXPLORE_FACTOR = 10

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("explore", derandomize=False, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.load_profile("explore" if EXPLORE else "ci")


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for `examples` examples under the loaded profile (10x when exploring)."""
    return settings(max_examples=examples * (EXPLORE_FACTOR if EXPLORE else 1))


def fuzz_rng(seed: int) -> random.Random:
    """The generator of a hand-rolled fuzz loop: `seed` in CI; a fresh, printed seed when exploring."""
    if EXPLORE:
        seed = int(os.environ.get("EDGEKD_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
        print(f"fuzz seed {seed} (replay: HYPOTHESIS_PROFILE=explore EDGEKD_FUZZ_SEED={seed})")
    return random.Random(seed)


def fuzz_cases(n: int) -> int:
    """How many cases a hand-rolled loop runs: a fixed count (never a time budget), 10x when exploring."""
    return n * (EXPLORE_FACTOR if EXPLORE else 1)
