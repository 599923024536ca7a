"""`edgekd bench` from the command line: providers, output files, --compare, sweeps,
memory, and a run in an environment that has no torch at all."""

import csv
import importlib.util
import io
import json
import os
import subprocess
import venv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from test_bench import ARGMAX_X, ARGMAX_Y, CFG, argmax_net, conv_net

from edgekd.cli import main
from edgekd.runtime import bench
from edgekd.runtime import bench_output as benchfmt
from edgekd.runtime.measure import MemoryProbe, low_confidence, measure_latency
from edgekd.runtime.providers import PROVIDERS

REPO = Path(__file__).resolve().parents[2]
# the hand-made models have no edgekd metadata: --scale 1/255 states x/255 (metadata models keep theirs)
# sequential: several models would be interleaved by default, in rounds of more than 3 runs
FAST = ["--warmup", "0", "--runs", "3", "--min-seconds", "0", "--no-progress", "--scale", "1/255", "--no-interleave"]


def _cli(*args):
    result = CliRunner().invoke(main, ["bench", *map(str, args)], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three models that score 100, 100 and 75 % on eval.npz (argmax nets of 4 classes)."""
    d = tmp_path_factory.mktemp("three")
    paths = [argmax_net(d / "plain.onnx"), argmax_net(d / "head4d.onnx", four_d=True),
             argmax_net(d / "normed.onnx", meta={"edgekd.mean": "[0.5]", "edgekd.std": "[0.25]"})]
    np.savez(d / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    np.savez(d / "eval_all_right.npz", x=ARGMAX_X, y=np.array([0, 1, 2, 3], np.int64))
    return d, paths


# -- 1. --list-providers ---------------------------------------------------------------


def test_list_providers_table_and_json():
    result = _cli("--list-providers")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"onnxruntime {ort.__version__}"
    # each line names the package that brings the provider
    assert any(line.split()[:3] == ["available", "cpu", "CPUExecutionProvider"]
               and line.endswith(f"[built-in: onnxruntime {ort.__version__}]") for line in lines)
    result = _cli("--list-providers", "--json")
    assert result.exit_code == 0
    entries = json.loads(result.output)["providers"]
    plugins = {e["ort_name"] for e in entries if e["kind"] == "plugin"}  # installed onnxruntime-ep-* packages
    available = set(ort.get_available_providers())
    for short in PROVIDERS:
        ep = PROVIDERS.get(short).ort_name
        if ep not in available and ep not in plugins:
            (line,) = [ln for ln in lines if f" {ep}:" in ln]
            assert line.split()[:2] == ["missing", short] and line.endswith(PROVIDERS.get(short).hint)
    if "CUDAExecutionProvider" not in available:
        assert any("missing" in ln and "onnxruntime-gpu" in ln for ln in lines)
    assert {e["ort_name"] for e in entries if e["available"] and e["kind"] == "built-in"} == available
    assert {e["ort_name"] for e in entries} >= available | {PROVIDERS.get(short).ort_name for short in PROVIDERS}
    assert all(e["hint"] for e in entries if not e["available"])
    for e in entries:
        assert (e["package"] is None) == (e["kind"] is None)  # a missing one has no package


def test_bench_without_models_is_a_usage_error():
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 2 and "--list-providers" in result.output


# -- 2. low confidence -------------------------------------------------------------------


@pytest.mark.parametrize("timings, expected", [
    ([1.0] * 700, []),
    ([1.0] * 100, ["p99 from 100 runs"]),
    ([1.0] * 63, ["p90 from 63 runs", "p99 from 63 runs"]),
    ([1.0, 4.0] * 350, ["noisy: coefficient of variation 0.60"]),  # mean 2.5, std 1.5; p99/p50 = 1.6
    ([1.0] * 692 + [4.0] * 8, ["long tail: p99 is 4.0x p50"]),  # CV 0.31
    ([1.0] * 690 + [10.0] * 10, ["noisy: coefficient of variation 0.95", "long tail: p99 is 10.0x p50"]),
])
def test_low_confidence_hand_made_timings(timings, expected):
    reasons = low_confidence(timings)
    assert len(reasons) == len(expected) and all(r.startswith(e) for r, e in zip(reasons, expected)), reasons


class _FakeSession:
    """Runs in 1 ms except every 50th run, which stalls 10 ms."""

    def __init__(self):
        self.calls = 0

    def run(self, outputs, feed):
        self.calls += 1
        import time

        time.sleep(0.010 if self.calls % 50 == 0 else 0.001)


def test_low_confidence_from_a_fake_session():
    timings, _, _ = measure_latency(_FakeSession(), {}, warmup=0, runs=100, min_seconds=0.0)
    reasons = low_confidence(timings)
    assert any(r.startswith("p99 from 100 runs") for r in reasons)
    assert any(r.startswith("long tail") for r in reasons)  # 2 stalls in 100 runs reach p99
    assert not any(r.startswith("p90") for r in reasons)


def test_low_confidence_in_rows_json_and_table(three):
    d, paths = three
    result = _cli(paths[0], "--json", *FAST)
    (model,) = json.loads(result.output)["models"]
    assert model["runs"] == 3 and model["low_confidence"][:2] == [
        "p90 from 3 runs (needs >= 64)", "p99 from 3 runs (needs >= 662)"]
    table = _cli(paths[0], *FAST).output.splitlines()
    assert table[-2].startswith("* plain (batch 1, threads default): low confidence: p90 from 3 runs")
    assert table[-1] == "plain: synthetic input (no eval set): accuracy not measured"


# -- 3. output files ---------------------------------------------------------------------


def test_all_outputs_for_three_models(three, tmp_path):
    d, paths = three
    out = {k: tmp_path / f"out.{k}" for k in ("csv", "md", "json", "png")}
    result = _cli(*paths, "--data", d / "eval.npz", *FAST, "--csv", out["csv"], "--md", out["md"],
                  "--json-out", out["json"], "--plot", out["png"])
    assert result.exit_code == 0, result.output
    names = ["plain", "head4d", "normed"]
    assert [line.split()[0] for line in result.output.splitlines()[2:5]] == names  # the table

    report = json.loads(out["json"].read_text())
    assert report["schema"] == "edgekd.bench/1" and [m["name"] for m in report["models"]] == names
    assert [m["top1"] for m in report["models"]] == [75.0, 75.0, 75.0]
    assert report["sweep"] == {"batch_sizes": [1], "threads": [0]}

    rows = list(csv.DictReader(io.StringIO(out["csv"].read_text())))
    assert [r["name"] for r in rows] == names and list(rows[0]) == list(benchfmt.CSV_COLUMNS)
    for row, model in zip(rows, report["models"]):
        assert float(row["p50_ms"]) == model["latency_ms"]["p50"] and row["top1"] == "75.0"
        assert row["low_confidence"].startswith("p90 from 3 runs")

    md = out["md"].read_text().splitlines()
    table = [line for line in md if line.startswith("| ")]
    assert len(table) == 1 + 3 and [line.split("|")[1].strip() for line in table[1:]] == names

    pytest.importorskip("matplotlib")
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_accuracy(three, tmp_path):
    pytest.importorskip("matplotlib")
    d, paths = three
    result = CliRunner().invoke(main, ["bench", str(paths[0]), *FAST, "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0 and not (tmp_path / "p.png").exists()
    assert "no plot" in result.output


# -- 4. --compare ------------------------------------------------------------------------


def _model(name, p50, p90, p99, throughput, top1, **extra):
    return {"name": name, "batch_size": 1, "threads": 0, "top1": top1, "throughput": throughput,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99}, "low_confidence": [], **extra}


def test_compare_hand_computed(tmp_path):
    a = {"schema": "edgekd.bench/1", "models": [
        _model("m1", 2.0, 4.0, 8.0, 500.0, 90.0),
        _model("m2", 10.0, 12.0, 20.0, 100.0, None),
        _model("only_a", 1.0, 1.0, 1.0, 1.0, 1.0),
    ]}
    b = {"schema": "edgekd.bench/1", "models": [
        _model("only_b", 1.0, 1.0, 1.0, 1.0, 1.0),
        _model("m2", 5.0, 15.0, 30.0, 250.0, 50.0, low_confidence=["p99 from 3 runs"]),
        _model("m1", 1.0, 2.0, 10.0, 1000.0, 88.5),
    ]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    rows = benchfmt.compare(a, b)
    assert [r["name"] for r in rows] == ["m1", "m2"]
    m1, m2 = rows
    assert (m1["p50_ratio"], m1["p90_ratio"], m1["p99_ratio"], m1["throughput_ratio"]) == (0.5, 0.5, 1.25, 2.0)
    assert m1["top1_diff"] == -1.5 and not m1["low_confidence"]
    assert (m2["p50_ratio"], m2["p90_ratio"], m2["p99_ratio"], m2["throughput_ratio"]) == (0.5, 1.25, 1.5, 2.5)
    assert m2["top1_diff"] is None and m2["low_confidence"]

    result = _cli("--compare", tmp_path / "a.json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2].split() == ["m1", "1", "default", "0.500", "0.500", "1.250", "2.000", "-1.50"]
    assert lines[3].split() == ["m2*", "1", "default", "0.500", "1.250", "1.500", "2.500", "-"]
    result = _cli("--compare", tmp_path / "a.json", tmp_path / "b.json", "--json")
    assert json.loads(result.output)["models"] == rows

    (tmp_path / "bad.json").write_text("{")
    result = CliRunner().invoke(main, ["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "not JSON" in result.output


def test_compare_two_real_runs(three, tmp_path):
    d, paths = three
    for name, data in (("a", "eval.npz"), ("b", "eval_all_right.npz")):
        assert _cli(paths[0], "--data", d / data, *FAST, "--json-out", tmp_path / f"{name}.json").exit_code == 0
    (row,) = benchfmt.compare(*(json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab"))
    assert row["top1_diff"] == 25.0 and row["p50_ratio"] > 0


# -- 5. batch sizes x threads -----------------------------------------------------------


def test_batch_and_thread_sweep(three, tmp_path):
    d, paths = three
    fixed = conv_net(tmp_path / "fixed1.onnx", batch=1)
    result = _cli(paths[0], fixed, "--batch-size", "1,2", "--threads", "1,2", "--json", *FAST)
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)["models"]
    got = [(m["name"], m["batch_size"], m["threads"], m["input_shape"][0]) for m in models]
    assert got == [("plain", 1, 1, 1), ("plain", 1, 2, 1), ("plain", 2, 1, 2), ("plain", 2, 2, 2),
                   ("fixed1", 1, 1, 1), ("fixed1", 1, 2, 1)]  # a fixed batch dim: one row per threads
    assert all(m["throughput"] == pytest.approx(m["batch_size"] / (m["latency_ms"]["mean"] / 1000)) for m in models)
    table = _cli(paths[0], "--threads", "1,2", *FAST).output.splitlines()
    assert [line.split()[4] for line in table[2:4]] == ["1", "2"]  # the threads column

    bad = CliRunner().invoke(main, ["bench", str(paths[0]), "--threads", "1,x"])
    assert bad.exit_code == 2 and "integers separated by commas" in bad.output
    bad = CliRunner().invoke(main, ["bench", str(paths[0]), "--batch-size", "0", *FAST])
    assert bad.exit_code == 2 and "batch_size must be positive" in bad.output


# -- 6. memory ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux)")
def test_memory_fields(three):
    d, paths = three
    (row,) = bench.bench([paths[0]], cfg=CFG, progress=False)
    for value in (row.rss_before_bytes, row.rss_peak_bytes, row.rss_delta_bytes):
        assert isinstance(value, int)
    assert row.rss_before_bytes > 0 and row.rss_peak_bytes >= row.rss_before_bytes
    assert row.rss_delta_bytes == row.rss_peak_bytes - row.rss_before_bytes
    assert row.file_bytes == paths[0].stat().st_size > 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux)")
def test_memory_probe_sees_a_freed_peak():
    probe = MemoryProbe()
    probe.start()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched, then freed before finish()
    del block
    before, peak, delta = probe.finish()
    # The high-water mark (or, without clear_refs, nothing: sampling misses a freed peak)
    if probe._hwm_reset:
        assert delta >= 60 * 1024 * 1024
    assert peak >= before > 0 and delta == peak - before


# -- 7. a torch-free environment ---------------------------------------------------------

DEVICE_PACKAGES = ("onnxruntime", "numpy", "click", "flatbuffers", "packaging", "google.protobuf")


def _device_site(site: Path) -> None:
    """Links to only what a device installs (onnxruntime, numpy, click and onnxruntime's
    own dependencies) and the edgekd sources, in `site`."""
    for name in DEVICE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"cannot locate the package '{name}' to build a torch-free environment")
        source = Path(list(spec.submodule_search_locations)[0])
        target = site / name.replace(".", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
        top = source.parent if "." not in name else source.parent.parent
        for extra in list(top.glob(f"{name.split('.')[0]}.libs")) + list(top.glob(f"{name.split('.')[-1]}-*.dist-info")):
            if not (site / extra.name).exists():
                (site / extra.name).symlink_to(extra)
    (site / "edgekd").symlink_to(REPO / "edgekd")


def test_bench_runs_without_torch(tmp_path):
    env_dir, site = tmp_path / "venv", tmp_path / "device-site"
    site.mkdir()
    _device_site(site)
    venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    (purelib,) = env_dir.glob("lib/python*/site-packages")
    (purelib / "device.pth").write_text(str(site) + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONNOUSERSITE": "1", "HOME": str(tmp_path)}

    def run(*args):
        return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    probe = run("-c", "import sys, importlib.util as u; print(sys.prefix); "
                      "print(*[n for n in ('torch', 'torchvision', 'onnx', 'yaml', 'matplotlib') if u.find_spec(n)])")
    assert probe.returncode == 0, probe.stderr
    prefix, present = probe.stdout.splitlines()
    assert Path(prefix) == env_dir and present == "", present  # a venv of its own, none of these
    imported = run("-c", "import torch")
    assert imported.returncode != 0 and "No module named 'torch'" in imported.stderr

    model = argmax_net(tmp_path / "model.onnx")
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    result = run("-m", "edgekd", "bench", "model.onnx", "--data", "eval.npz", "--json", *FAST)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["models"]
    assert row["top1"] == 75.0 and row["params"] is None  # no onnx: no parameter count
    assert row["name"] == model.stem and row["rss_peak_bytes"] > 0


# -- 7. --reference and the protocol flags ---------------------------------------------------


def test_reference_in_every_output(three, tmp_path):
    """normed vs plain, the same net after mean 0.5 / std 0.25: outputs (x - 0.5) / 0.25 =
    4x - 2 vs x, so the argmax agrees everywhere and the largest difference |3x - 2| is
    at the dark pixels, x = 0: 2."""
    d, (plain, _, normed) = three
    out = {k: tmp_path / f"out.{k}" for k in ("csv", "md", "json")}
    result = _cli(normed, "--data", d / "eval.npz", "--reference", plain, *FAST, "--csv", out["csv"],
                  "--md", out["md"], "--json-out", out["json"])
    assert result.exit_code == 0, result.output
    (model,) = json.loads(out["json"].read_text())["models"]
    assert model["reference"]["path"] == str(plain) and model["reference"]["argmax_match"] == 100.0
    assert model["reference"]["max_abs_diff"] == pytest.approx(2.0, abs=1e-6) and model["reference"]["samples"] == 4
    header, line = result.output.splitlines()[:3:2]
    assert header.split()[-4:] == ["agree", "%", "max", "|diff|"] and line.split()[-2:] == ["100.00", "2"]
    assert f"normed: compared with {plain} on 4 eval inputs" in result.output
    (row,) = csv.DictReader(io.StringIO(out["csv"].read_text()))
    assert row["reference"] == str(plain) and float(row["ref_argmax_match"]) == 100.0 and row["ref_inputs"] == "eval"
    assert row["provider_nodes"] == f"CPUExecutionProvider={sum(model['op_counts'].values())}"
    md = out["md"].read_text()
    assert "| agree % | max \\|diff\\| |" in md and "| 100.00 | 2 |" in md


def test_protocol_flags(three):
    d, paths = three
    result = _cli(paths[0], "--json", "--warmup", "2", "--warmup-seconds", "0.05", "--runs", "3", "--min-seconds", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["models"][0]["warmup"] > 2  # 0.05 s of warm-up is many runs of this tiny net
    assert report["config"]["warmup_seconds"] == 0.05
    result = _cli(paths[0], "--json", "--inter-threads", "2", "--intra-spinning", "off", "--inter-spinning", "on", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["models"][0]["inter_threads"] == 2 and report["models"][0]["warmup"] == 0
    assert report["config"]["intra_spinning"] is False and report["config"]["inter_spinning"] is True
    bad = CliRunner().invoke(main, ["bench", str(paths[0]), "--intra-spinning", "maybe"])
    assert bad.exit_code == 2 and "maybe" in bad.output
    bad = CliRunner().invoke(main, ["bench", str(paths[0]), "--inter-threads", "-1", *FAST])
    assert bad.exit_code == 2 and "inter_threads must be >= 0" in bad.output


def test_run_report_states_the_int8_agreement(tmp_path):
    """report.md (compress) gets one line per model that bench compared with a reference."""
    from edgekd.pipeline.report import build_report, markdown

    argmax_net(tmp_path / "model.fp32.onnx")
    argmax_net(tmp_path / "model.int8.onnx", four_d=True)  # stands in for the int8 model: the same argmax
    np.savez(tmp_path / "eval.npz", x=ARGMAX_X, y=ARGMAX_Y)
    rows = bench.bench_run_dir(tmp_path, CFG, progress=False)
    report = build_report(recipe={"name": "r"}, stages={}, bench_json=bench.to_json(rows, cfg=CFG))
    lines = [line for line in markdown(report).splitlines() if " vs " in line]
    assert lines == ["model.int8 vs model.fp32.onnx: argmax agreement 100.00% on 4 eval inputs, "
                     "max abs difference of the outputs 0."]
