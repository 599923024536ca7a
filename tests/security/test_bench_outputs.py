"""`edgekd bench` writes only where it is asked to, and every benchmark ends and fits in memory.

Outputs (--json-out, --csv, --md, --plot) never replace an input (the models and their
external data, --data, --reference, a run directory's files; also through symlinks and hard
links), replace an existing file only with --force, and are refused before any benchmarking.
Durations and run counts are finite and bounded, the timing loops stop at hard caps, and
an input too large to build is refused before it is allocated. Every refusal: exit 2, one
line, no traceback, inputs untouched.
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import edgekd
from clitools import refused
from edgekd.cli import main
from edgekd.errors import ConfigError, EdgekdError
from edgekd.runtime import measure

FAST = ["--warmup", "0", "--runs", "2", "--min-seconds", "0", "--no-progress"]
X = np.array([[200, 0, 0, 0], [0, 255, 10, 0], [0, 0, 90, 3], [1, 2, 3, 4]], np.uint8).reshape(4, 1, 2, 2)
Y = np.array([0, 1, 2, 3], np.int64)


def identity_net(path, shape=("N", 1, 2, 2), meta=None, external=False):
    """Input -> Flatten -> Gemm with identity weights (4 outputs): predicts the brightest pixel.
    Another image shape is averaged first (GlobalAveragePool, Gemm 1 -> 4).
    external: the weights in `path`.data beside it."""
    weights = numpy_helper.from_array(np.eye(4, dtype=np.float32), "I")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "I"], ["y"])]
    if tuple(shape[1:]) != (1, 2, 2):
        weights = numpy_helper.from_array(np.ones((1, 4), np.float32), "I")
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
                 nodes[1]]
    graph = helper.make_graph(nodes, "identity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 4])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, meta)
    if external:
        (path.parent / (path.name + ".data")).write_bytes(weights.raw_data)
        set_external_data(model.graph.initializer[0], location=path.name + ".data", offset=0,
                          length=len(weights.raw_data))
        model.graph.initializer[0].ClearField("raw_data")
    onnx.save(model, str(path))
    return path


@pytest.fixture
def inputs(tmp_path):
    """A model, a reference, an eval set, and a run directory with a model and files of its own."""
    run = tmp_path / "run"
    run.mkdir()
    np.savez(tmp_path / "eval.npz", x=X, y=Y)
    np.savez(run / "eval.npz", x=X, y=Y)
    (run / "report.json").write_text('{"schema": "edgekd.report/1"}')
    return {"model": identity_net(tmp_path / "model.onnx"), "reference": identity_net(tmp_path / "ref.onnx"),
            "data": tmp_path / "eval.npz", "run": run, "run_model": identity_net(run / "student.fp32.onnx"),
            "other": tmp_path / "other.txt"}


def snapshot(*paths) -> dict:
    return {p: p.read_bytes() for p in paths}


def bench(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


@pytest.fixture
def no_benchmark(monkeypatch):
    """Any benchmarking fails the test: refusals must come first."""
    from edgekd.runtime import bench as runtime_bench

    def boom(*args, **kwargs):
        raise AssertionError("benchmarked before refusing")

    monkeypatch.setattr(runtime_bench, "bench", boom)
    monkeypatch.setattr(runtime_bench, "bench_run_dir", boom)


# -- 1. writing over what is not ours ----------------------------------------------------------


@pytest.mark.parametrize("flag", ["--json-out", "--csv", "--md", "--markdown", "--plot"])
@pytest.mark.parametrize("target", ["model", "data", "reference"])
def test_an_output_never_replaces_an_input_even_with_force(inputs, no_benchmark, flag, target):
    before = snapshot(inputs["model"], inputs["data"], inputs["reference"])
    result = bench(inputs["model"], "--data", inputs["data"], "--reference", inputs["reference"], *FAST,
                   flag, inputs[target], "--force")
    refused(result, "is the input", "--md" if flag == "--markdown" else flag)
    assert snapshot(*before) == before


def test_through_a_symlink_or_a_hard_link(inputs, no_benchmark, tmp_path):
    before = snapshot(inputs["model"], inputs["data"])
    (tmp_path / "link.json").symlink_to(inputs["model"])
    os.link(inputs["data"], tmp_path / "hard.csv")
    refused(bench(inputs["model"], *FAST, "--json-out", tmp_path / "link.json", "--force"), "is the input")
    refused(bench(inputs["model"], "--data", inputs["data"], *FAST, "--csv", tmp_path / "hard.csv", "--force"),
            "is the input")
    # a path that walks through a symlinked folder to the model
    (tmp_path / "via").symlink_to(tmp_path, target_is_directory=True)
    refused(bench(inputs["model"], *FAST, "--md", tmp_path / "via" / "model.onnx", "--force"), "is the input")
    assert snapshot(*before) == before and (tmp_path / "link.json").is_symlink()


def test_external_data_of_a_model_is_an_input(tmp_path, no_benchmark):
    model = identity_net(tmp_path / "ext.onnx", external=True)
    data = tmp_path / "ext.onnx.data"
    before = snapshot(model, data)
    refused(bench(model, *FAST, "--csv", data, "--force"), "is the input")
    assert snapshot(model, data) == before


@pytest.mark.parametrize("name", ["report.json", "eval.npz", "student.fp32.onnx"])
def test_a_run_directory_s_files_are_inputs(inputs, no_benchmark, name):
    target = inputs["run"] / name
    before = snapshot(target)
    line = refused(bench(inputs["run"], *FAST, "--json-out", target, "--force"), str(target))
    assert "is the input" in line or "run directory" in line
    assert snapshot(target) == before


def test_a_link_inside_the_run_directory_is_not_followed_out(inputs, no_benchmark):
    inputs["other"].write_text("mine")
    (inputs["run"] / "notes.txt").symlink_to(inputs["other"])
    line = refused(bench(inputs["run"], *FAST, "--json-out", inputs["run"] / "notes.txt", "--force"))
    assert "run directory" in line or "is the input" in line
    assert inputs["other"].read_text() == "mine"


def test_an_existing_file_needs_force(inputs):
    other = inputs["other"]
    other.write_text("keep me")
    refused(bench(inputs["model"], *FAST, "--json-out", other), "exists", "--force")
    assert other.read_text() == "keep me"
    result = bench(inputs["model"], *FAST, "--json-out", other, "--force")
    assert result.exit_code == 0, result.output
    assert edgekd.__name__ and '"schema": "edgekd.bench/1"' in other.read_text()


def test_folders_special_files_and_twice_the_same_file(inputs, no_benchmark, tmp_path):
    (tmp_path / "folder").mkdir()
    refused(bench(inputs["model"], *FAST, "--csv", tmp_path / "folder", "--force"), "folder")
    refused(bench(inputs["model"], *FAST, "--csv", f"{tmp_path}/new-folder/"), "folder")
    os.mkfifo(tmp_path / "fifo")
    refused(bench(inputs["model"], *FAST, "--md", tmp_path / "fifo", "--force"), "not a regular file")
    refused(bench(inputs["model"], *FAST, "--json-out", tmp_path / "a.out", "--csv", tmp_path / "a.out"),
            "same file")
    inputs["other"].write_text("x")
    refused(bench(inputs["model"], *FAST, "--md", inputs["other"] / "below.md"), "is not a folder")
    assert not (tmp_path / "a.out").exists() and not (tmp_path / "new-folder").exists()


def test_new_outputs_are_written(inputs, tmp_path):
    out = tmp_path / "out"
    result = bench(inputs["model"], "--data", inputs["data"], *FAST, "--json-out", out / "b.json",
                   "--csv", out / "b.csv", "--md", out / "b.md")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["b.csv", "b.json", "b.md"]


# -- 2. loops without end, sizes beyond memory -------------------------------------------------


@pytest.mark.parametrize("flag, value", [
    ("--min-seconds", "inf"), ("--warmup-seconds", "inf"), ("--min-seconds", "nan"), ("--warmup-seconds", "NaN"),
    ("--min-seconds", "-1"), ("--warmup-seconds", "-0.5"), ("--min-seconds", "1e9"), ("--min-seconds", "abc"),
    ("--runs", "0"), ("--runs", "-3"), ("--runs", "1e3"), ("--warmup", "-1"), ("--warmup", "10000000000"),
])
def test_durations_and_counts_are_finite_and_bounded(inputs, no_benchmark, flag, value):
    refused(bench(inputs["model"], "--no-progress", flag, value), flag)


@pytest.mark.parametrize("key, value", [("min_seconds", math.inf), ("warmup_seconds", math.inf),
                                        ("min_seconds", math.nan), ("warmup_seconds", -1.0), ("runs", 10**12)])
def test_the_api_refuses_them_too(inputs, no_benchmark, key, value):
    with pytest.raises(EdgekdError) as info:
        edgekd.bench([inputs["model"]], **{key: value})
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


class CountingSession:
    def __init__(self):
        self.calls = 0

    def run(self, outputs, feed):
        self.calls += 1


def test_the_timing_loops_end_on_their_hard_caps(monkeypatch):
    """A protocol that slipped past the checks still ends: at MAX_RUNS runs, or MAX_SECONDS."""
    monkeypatch.setattr(measure, "MAX_RUNS", 50)
    monkeypatch.setattr(measure, "MAX_SECONDS", 0.05)
    session = CountingSession()
    timings, _, warmup = measure.measure_latency(session, {}, warmup=0, runs=1, min_seconds=0.04,
                                                 warmup_seconds=0.04)
    assert warmup <= 50 and len(timings) <= 50
    assert measure.stopped_early(timings, 1, 0.04)  # 50 free runs are far below 0.04 s
    sessions = [(CountingSession(), {}), (CountingSession(), {})]
    timings = measure.measure_interleaved(sessions, runs=1, min_seconds=0.04)
    assert max(len(t) for t in timings) <= 50 + measure.ROUND_RUNS
    with pytest.raises(ConfigError):
        measure.measure_latency(session, {}, warmup=0, runs=1, min_seconds=math.inf)
    with pytest.raises(ConfigError):
        measure.warm_up(session, {}, warmup=0, warmup_seconds=math.nan)


@pytest.mark.parametrize("batch", ["1000000000", "1000000", "4096"])
def test_a_huge_batch_is_refused_before_it_is_allocated(tmp_path, batch):
    """4096 x 1 x 512 x 512 float32 is 4 GiB: over the 2 GiB cap (BenchConfig may refuse the
    larger ones first; either way one line)."""
    model = identity_net(tmp_path / "wide.onnx", shape=("N", 1, 512, 512))
    line = refused(bench(model, *FAST, "--batch-size", batch))
    assert "batch" in line
    from edgekd.runtime.bench import bench as bench_files
    from edgekd.runtime.config import BenchConfig

    with pytest.raises(ConfigError, match="use a smaller --batch-size") as info:
        bench_files([model], cfg=BenchConfig(batch_size=4096, warmup=0, runs=1, min_seconds=0.0), progress=False)
    assert "GiB" in str(info.value)


def test_a_fixed_huge_input_is_refused_before_it_is_allocated(tmp_path):
    model = identity_net(tmp_path / "huge.onnx", shape=(1, 1, 1000000, 1000000))
    refused(bench(model, *FAST), "huge.onnx", "TiB", "more than the limit")


def test_an_eval_set_is_judged_by_its_headers_before_it_is_decompressed(tmp_path, inputs):
    """x declared 10^6 x 3 x 1000 x 1000 in a few hundred bytes: refused from the .npy
    header, with nothing decompressed (the data is not even there)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 3, 1000, 1000)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
    assert path.stat().st_size < 1000
    line = refused(bench(inputs["model"], "--data", path, *FAST), "bomb.npz")
    assert "memory available" in line
