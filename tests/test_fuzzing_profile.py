"""The suite gives the same outcome on every run of a commit: Hypothesis is derandomized with
no example database and keeps its caches out of the checkout; the hand-rolled fuzz loops
count cases (tests/fuzzing.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import settings
from hypothesis.configuration import storage_directory

import fuzzing

TESTS = Path(__file__).resolve().parent


def test_hypothesis_runs_derandomized_without_a_database():
    assert not fuzzing.EXPLORE  # the default, and CI's
    assert settings.default.derandomize is True
    assert settings.default.database is None
    assert fuzzing.fuzz_settings(7).max_examples == 7 and fuzzing.fuzz_cases(7) == 7


def test_hypothesis_keeps_its_caches_out_of_the_checkout():
    where = storage_directory("constants", intent_to_write=False).path.resolve()
    assert TESTS.parent not in where.parents, where


def test_no_test_file_chooses_its_own_randomness_or_a_time_budget():
    """A per-test `settings(derandomize=False)` or `database=...` would undo the profile, and a
    loop bounded by the clock runs more cases on a faster machine."""
    offenders = []
    for path in TESTS.rglob("test_*.py"):
        if "fuzz" in path.name and path.name != Path(__file__).name and "monotonic" in path.read_text():
            offenders.append(f"{path.name}: a loop bounded by time.monotonic()")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "settings":
                offenders += [f"{path.name}: settings({k.arg}=...)" for k in node.keywords
                              if k.arg in ("derandomize", "database")]
    assert offenders == []
