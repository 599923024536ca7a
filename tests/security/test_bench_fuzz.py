"""Bad input to `edgekd bench` is exit 2 with one line, never an internal error (exit 1).

Hand-made cases: garbled edgekd.mean / edgekd.std / edgekd.params metadata, std 0 (inf
inputs), malformed --compare files, eval labels outside the model's outputs. Then a fuzz
test with a seeded generator and Hypothesis, a fixed number of cases each (tests/fuzzing.py:
the same cases on every run in CI; HYPOTHESIS_PROFILE=explore draws new ones): thousands
of generated metadata entries at the metadata readers and preprocessing, and generated
reports at the --compare reader; every outcome is a valid result or an EdgekdError with
exit code 2 and a short one-line message, never another exception. Every failure a fuzz run
found is a named test of its own below ("found by fuzzing").
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st
from test_bench_outputs import FAST, X, identity_net, refused

from edgekd.cli import main
from edgekd.errors import EdgekdError
from edgekd.runtime import bench_output
from edgekd.runtime.inputs import preprocess
from edgekd.runtime.metadata import meta_int, meta_json
from fuzzing import fuzz_cases, fuzz_rng, fuzz_settings

# cases per fuzz loop, fixed so that every run of a commit checks the same ones (about 4 s each here)
METADATA_CASES = 3000
REPORT_CASES = 3000
COMPARE_FILES = 60


def bench(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


# -- metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("edgekd.mean", '["a"]'), ("edgekd.mean", '"0.5"'), ("edgekd.mean", "0.5"), ("edgekd.mean", "[NaN]"),
    ("edgekd.mean", "[1e999]"), ("edgekd.mean", "[0.1, 0.2]"), ("edgekd.mean", "[[0.5]]"), ("edgekd.mean", "[true]"),
    ("edgekd.mean", "[" * 50000), ("edgekd.mean", "[1e39]"), ("edgekd.std", "[0]"), ("edgekd.std", "[-0.25]"),
    ("edgekd.std", "[1e-45]"), ("edgekd.std", "{}"), ("edgekd.params", "-5"), ("edgekd.params", "1e5"),
    ("edgekd.macs", "9" * 5000), ("edgekd.macs", str(10**30)),
])
def test_bad_metadata_is_exit_2(tmp_path, key, value):
    model = identity_net(tmp_path / "m.onnx", meta={key: value})
    np.savez(tmp_path / "eval.npz", x=X, y=np.array([0, 1, 2, 3]))
    line = refused(bench(model, "--data", tmp_path / "eval.npz", *FAST), key)
    assert len(line) < 400


def test_std_zero_would_give_infinite_inputs():
    with pytest.raises(EdgekdError, match="must be positive") as info:
        preprocess(X, {"edgekd.std": "[0]"})
    assert info.value.exit_code == 2


@pytest.mark.parametrize("labels", [[0, 1, 2, 4], [0, 1, 2, 99], [-1, 1, 2, 3]])
def test_labels_outside_the_model_s_outputs_are_refused(tmp_path, labels):
    model = identity_net(tmp_path / "m.onnx")  # 4 outputs: labels 0..3
    np.savez(tmp_path / "eval.npz", x=X, y=np.array(labels, np.int64))
    line = refused(bench(model, "--data", tmp_path / "eval.npz", *FAST))
    assert "labels" in line


# -- --compare ---------------------------------------------------------------------------------


def good_report() -> dict:
    return {"schema": "edgekd.bench/1", "models": [
        {"name": "m", "batch_size": 1, "threads": 0, "latency_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
         "throughput": 1000.0, "top1": 75.0, "low_confidence": []}]}


def mutated(**change) -> str:
    report = good_report()
    report["models"][0].update(change)
    return json.dumps(report)


@pytest.mark.parametrize("content", [
    "not json", "", "\xff\xfe", "[1, 2]", '{"models": 3}', '{"models": [1]}', '{"models": ["x"]}',
    mutated(name=3), mutated(latency_ms={"p50": "fast", "p90": 1, "p99": 1}), mutated(latency_ms=None),
    mutated(batch_size=[1]), mutated(threads="2"), mutated(throughput=10**400), mutated(top1="high"),
    mutated(latency_ms={"p50": 1.0}), "[" * 100000,
    ('{"models": [{"name": "m", "latency_ms": {"p50": NaN, "p90": 1, "p99": 1}}]}'),
])
def test_a_malformed_compare_file_is_exit_2(tmp_path, content):
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_bytes(content.encode("utf-8", "surrogateescape") if content != "\xff\xfe" else b"\xff\xfe\x00")
    good.write_text(json.dumps(good_report()))
    refused(bench("--compare", good, bad), "bad.json")
    refused(bench("--compare", bad, good), "bad.json")


def test_compare_files_that_are_not_files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(good_report()))
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    refused(bench("--compare", good, tmp_path / "folder"), "not a regular file")
    refused(bench("--compare", good, tmp_path / "fifo"), "not a regular file")  # never opened: no hang
    refused(bench("--compare", good, tmp_path / "missing.json"), "does not exist")
    result = bench("--compare", good, good)
    assert result.exit_code == 0 and "1.000" in result.output


# -- fuzz --------------------------------------------------------------------------------------

ATOMS = ["0", "1", "-1", "0.5", "0.25", "3", "1e-45", "1e-320", "1e38", "1e39", "1e999", "-1e999", "NaN",
         "Infinity", "-Infinity", "true", "false", "null", '"a"', '""', "[]", "{}", "9" * 400, "-0", "2.5e-3"]


def json_like(rng: random.Random, depth: int = 0) -> str:
    """A JSON-ish string: numbers (edge values included), lists, objects, deep nesting,
    truncated or garbled text."""
    kind = rng.random()
    if kind < 0.35 or depth > 3:
        return rng.choice(ATOMS)
    if kind < 0.7:
        return "[" + ", ".join(json_like(rng, depth + 1) for _ in range(rng.randrange(5))) + "]"
    if kind < 0.78:
        return "{" + ", ".join(f'"{rng.choice("abk")}": {json_like(rng, depth + 1)}' for _ in range(3)) + "}"
    if kind < 0.84:
        n = rng.choice([10, 1000, 5000, 100000])
        return "[" * n + "]" * rng.choice([0, n])
    if kind < 0.92:
        text = json_like(rng, depth + 1)
        return text[: rng.randrange(len(text) + 1)]
    return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(12)))


def expect_valid_or_exit_2(call):
    """call() returns, or raises an EdgekdError with exit code 2 and a short one-line message."""
    try:
        return call()
    except EdgekdError as exc:
        assert exc.exit_code == 2, exc
        assert "\n" not in str(exc) and len(str(exc)) < 500, str(exc)[:600]
        return None


def check_metadata(meta: dict, channels: int) -> None:
    for key in meta:
        expect_valid_or_exit_2(lambda key=key: meta_json(meta, key))
        expect_valid_or_exit_2(lambda key=key: meta_int(meta, key))
    x = np.arange(2 * channels * 4, dtype=np.uint8).reshape(2, channels, 2, 2)
    out = expect_valid_or_exit_2(lambda: preprocess(x, meta))
    if out is not None:
        assert out.dtype == np.float32 and out.shape == x.shape and np.isfinite(out).all(), meta


def test_fuzz_metadata_readers_and_preprocessing():
    rng = fuzz_rng(17)
    keys = ["edgekd.mean", "edgekd.std", "edgekd.input_shape", "edgekd.class_names", "edgekd.params", "edgekd.macs"]
    for _ in range(fuzz_cases(METADATA_CASES)):
        meta = {k: json_like(rng) for k in rng.sample(keys, rng.randrange(1, len(keys) + 1))}
        check_metadata(meta, rng.choice([1, 3]))


def report_like(rng: random.Random):
    """A bench report with random damage: entries, keys and values replaced by other JSON."""
    report = good_report()
    report["models"] += [dict(report["models"][0], name=f"m{i}") for i in range(rng.randrange(3))]
    targets = [report, *report["models"], report["models"][0]["latency_ms"]]
    for _ in range(rng.randrange(4)):
        target = rng.choice(targets)
        if isinstance(target, dict) and target:
            key = rng.choice([*target, "models", "p50", "name"])
            value = json.loads(json_like(rng)) if rng.random() < 0.5 else rng.choice(
                [None, 3, -1.5, 10**400, float("nan"), "x", [1], {"p50": 1}, True])
            target[key] = value
    if rng.random() < 0.1 and isinstance(report.get("models"), list):
        report["models"].append(json.loads(json_like(rng)) if rng.random() < 0.5 else 7)
    return report


def some_report(rng: random.Random):
    """report_like, again until the generator's own JSON parses."""
    while True:
        try:
            return report_like(rng)
        except (ValueError, RecursionError):
            continue


def compare_outcome(a, b) -> None:
    def run():
        bench_output.check_compare_report(a, "a.json")
        bench_output.check_compare_report(b, "b.json")
        assert isinstance(bench_output.format_compare(bench_output.compare(a, b)), str)

    expect_valid_or_exit_2(run)


def test_fuzz_compare_reports(tmp_path):
    rng = fuzz_rng(29)
    for _ in range(fuzz_cases(REPORT_CASES)):
        compare_outcome(some_report(rng), some_report(rng))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(good_report()))
    for i in range(fuzz_cases(COMPARE_FILES)):  # whole files through the command line, JSON or not
        path = tmp_path / f"f{i}.json"
        path.write_text(json_like(rng) if rng.random() < 0.5 else json.dumps(some_report(rng), allow_nan=True))
        result = bench("--compare", good, path)
        # 0: compared; 1: nothing comparable (a gate must not pass); 2: a bad file. Never a traceback.
        assert result.exit_code in (0, 1, 2), result.output
        assert result.exit_code == 0 or len(result.output.strip().splitlines()) == 1, result.output


MEAN_2_STD_3 = {"edgekd.mean": "[0.5, 0.5]", "edgekd.std": "[0.25, 0.25, 0.25]"}


@fuzz_settings(300)
@given(st.dictionaries(st.sampled_from(["edgekd.mean", "edgekd.std", "edgekd.params"]),
                       st.one_of(st.text(max_size=30), st.lists(st.floats(), max_size=4).map(json.dumps)),
                       min_size=1), st.sampled_from([1, 3]))
@example(MEAN_2_STD_3, 3)
def test_fuzz_with_hypothesis(meta, channels):
    check_metadata(meta, channels)


# -- found by fuzzing: each failure a fuzz run ever found, replayed by name ---------------------


def test_found_by_fuzzing_mean_and_std_of_different_lengths():
    """A mean of 2 values and a std of 3 on a 3-channel input was a numpy broadcast error (exit 1);
    the command-line case is in tests/runtime/test_data_model_match.py."""
    x = np.zeros((1, 3, 2, 2), np.uint8)
    with pytest.raises(EdgekdError, match="edgekd.mean") as info:
        preprocess(x, MEAN_2_STD_3)
    assert info.value.exit_code == 2
