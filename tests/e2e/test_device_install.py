"""The device install, as README documents it: a fresh virtual environment (no system site
packages) with `pip install .` from this checkout gets what `edgekd bench` needs and no
torch; its `edgekd bench` runs on a run directory (made here by the main environment's
`edgekd compress`) and on a foreign ONNX model (onnx.helper); `edgekd compress` and
`edgekd export` there fail in one line that says what to install.

Skipped only when the package index cannot be reached (pip fails with a network error).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh venv

REPO = Path(__file__).resolve().parents[2]
# the README's device install (run literally, in a copy of this checkout)
DEVICE_INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install ."
TRAIN_DISTRIBUTIONS = {"torch", "torchvision", "safetensors", "matplotlib", "torch-pruning", "torch_pruning", "pyyaml"}
NETWORK_ERRORS = ("Temporary failure in name resolution", "Name or service not known", "Network is unreachable",
                  "Failed to establish a new connection", "NewConnectionError", "ConnectTimeoutError",
                  "Max retries exceeded", "ProxyError", "Read timed out", "Could not fetch URL")
# the quickest run: a few hundred embedded images, one epoch each, a short bench (about 10 s)
TINY_RECIPE = """\
name: device
seed: 1
data: {name: fashion-mnist-subset, limit_train: 300, limit_test: 60, calib_size: 16}
teacher: {arch: tinycnn, arch_args: {width: 4}, epochs: 1, batch_size: 32, lr: 0.01, augment: false}
distill: {arch: tinycnn, arch_args: {width: 4}, epochs: 1, batch_size: 32, lr: 0.01, augment: false}
quantize: {max_drop: null}
bench: {warmup: 1, runs: 3, min_seconds: 0.0}
"""
# what ARCHITECTURE.md says loads no torch: these modules, and these packages with every module in them
TORCH_FREE_MODULES = ("edgekd", "edgekd.api", "edgekd.extras", "edgekd.errors", "edgekd.recipe", "edgekd.registry",
                      "edgekd.configtools")
TORCH_FREE_PACKAGES = ("edgekd.cli", "edgekd.runtime", "edgekd.io", "edgekd.data")


def _checkout_copy(dest: Path) -> Path:
    """The files pip builds edgekd from (top-level files and the package), without caches or
    build outputs: pip's in-tree build then writes into the copy, not into this checkout."""
    dest.mkdir()
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    shutil.copytree(REPO / "edgekd", dest / "edgekd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _env() -> dict:
    """The caller's environment, with `python3` meaning this interpreter and no venv active."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _network_error(pip_output: str) -> str | None:
    """What pip's output says about an index that could not be reached, if it says so."""
    for marker in NETWORK_ERRORS:  # the most specific first
        for line in pip_output.splitlines():
            if marker in line:
                return line[line.index(marker):].split("'")[0][:160]
    return None


def _probe_index(work: Path) -> str:
    """pip's output for one small download, with a retry so that a network error is shown
    (with no retries pip says only 'from versions: none')."""
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--retries", "1",
                            "--dest", str(work / "probe"), "click"], check=False, capture_output=True, text=True,
                           env=_env(), timeout=600)
    return probe.stdout + probe.stderr if probe.returncode != 0 else ""


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(bin folder of the device venv, a run directory); the run is made by the main
    environment while the device environment is being installed."""
    assert any(line.strip() == DEVICE_INSTALL for line in (REPO / "README.md").read_text().splitlines()), \
        f"README.md no longer shows the device install: {DEVICE_INSTALL}"
    work = tmp_path_factory.mktemp("device")
    (work / "tiny.yaml").write_text(TINY_RECIPE)
    run_dir = work / "run"
    compress_log = work / "compress.log"
    with compress_log.open("w") as log_file:  # a file, not a pipe: nothing reads it while pip runs
        compress = subprocess.Popen([sys.executable, "-m", "edgekd", "compress", str(work / "tiny.yaml"), "--out",
                                     str(run_dir), "--no-progress"], stdout=log_file, stderr=subprocess.STDOUT,
                                    cwd=work)
    try:
        source = _checkout_copy(work / "checkout")
        install = subprocess.run(["bash", "-c", DEVICE_INSTALL], check=False, cwd=source, env=_env(),
                                 capture_output=True, text=True, timeout=900)
        log = install.stdout + install.stderr
        if install.returncode != 0:
            unreachable = _network_error(log) or _network_error(_probe_index(work))
            if unreachable:
                pytest.skip(f"the package index is unreachable, and the device install needs onnxruntime, onnx, "
                            f"numpy, click and tqdm from it (pip: {unreachable})")
            pytest.fail(f"the device install failed:\n{log[-4000:]}")
        compress.wait(timeout=600)
    finally:
        if compress.poll() is None:
            compress.kill()
            compress.wait()
    assert compress.returncode == 0, compress_log.read_text()[-4000:]
    return source / ".venv" / "bin", run_dir


def run(bin_dir: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    """A program of the device venv, with nothing of the main environment on the path."""
    env = {k: v for k, v in _env().items() if k != "PATH"}
    env["PATH"] = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], check=False, capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_device_install_has_no_torch(device):
    bin_dir, _ = device
    assert "include-system-site-packages = false" in (bin_dir.parent / "pyvenv.cfg").read_text()
    for module in ("torch", "torchvision"):
        result = run(bin_dir, "python", "-c", f"import {module}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    listed = run(bin_dir, "python", "-m", "pip", "list", "--format=json")
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert not names & TRAIN_DISTRIBUTIONS, names & TRAIN_DISTRIBUTIONS
    assert {"edgekd", "onnxruntime", "onnx", "numpy", "click"} <= names
    # not the checkout: the installed package, in the venv's site-packages
    where = run(bin_dir, "python", "-c", "import edgekd; print(edgekd.__file__)", cwd="/")
    assert where.returncode == 0 and "site-packages" in where.stdout, where


def test_device_imports_of_bench_are_torch_free(device):
    """Every module of the packages that bench and the CLI use imports without torch, yaml,
    safetensors or matplotlib (none of them is installed: an import of one would fail)."""
    bin_dir, _ = device
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {TORCH_FREE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"for name in {TORCH_FREE_PACKAGES!r}:\n"
        "    for info in pkgutil.walk_packages(importlib.import_module(name).__path__, name + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "loaded = [m for m in ('torch', 'torchvision', 'yaml', 'safetensors', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = run(bin_dir, "python", "-c", code, cwd="/")
    assert result.returncode == 0, result.stderr


def test_device_help_works_and_training_commands_say_what_to_install(device, tmp_path):
    bin_dir, run_dir = device
    for args in ([], ["bench"], ["compress"], ["export"]):
        result = run(bin_dir, "edgekd", *args, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout, (args, result.stderr)
    for args in (["compress"], ["export", "--onnx", str(run_dir)]):
        result = run(bin_dir, "edgekd", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert "pip install 'edgekd[train]'" in result.stderr and "torch" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


def test_device_bench_run_dir(device, tmp_path):
    bin_dir, run_dir = device
    result = run(bin_dir, "edgekd", "bench", str(run_dir), "--json", "--no-progress", "--runs", "10",
                 "--min-seconds", "0", "--plot", str(tmp_path / "pareto.png"))
    assert result.returncode == 0, result.stderr
    assert "needs matplotlib" in result.stderr  # --plot without matplotlib: a note, not a failure
    bench = json.loads(result.stdout)
    assert bench["schema"] == "edgekd.bench/1"
    report = json.loads((run_dir / "report.json").read_text())
    models = {m["name"]: m for m in bench["models"]}
    assert set(models) == {m["name"] for m in report["models"]} == {"teacher.fp32", "model.fp32", "model.int8"}
    for expected in report["models"]:
        got = models[expected["name"]]
        assert got["stage"] == expected["stage"] and got["samples"] == expected["samples"] == 60
        assert 0.0 <= got["top1"] <= 100.0 and got["params"] == expected["params"]
        if bench["machine"]["onnxruntime"] == report["machine"]["onnxruntime"]:
            assert got["top1"] == expected["top1"]  # same models, eval set and ONNX Runtime
        assert 0 < got["latency_ms"]["p50"] <= got["latency_ms"]["p90"] <= got["latency_ms"]["p99"]
    # onnx is part of the device install: op counts prove that int8 runs as int8
    assert models["model.int8"]["int8_ops"] > 0 and models["model.fp32"]["int8_ops"] == 0


def foreign_model(path: Path) -> int:
    """A classifier edgekd did not make (no metadata): Conv -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm, 3x16x16 input, dynamic batch, 5 classes. Returns its parameter count."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"W": rng.standard_normal((8, 3, 3, 3)), "B": np.zeros(8), "G": rng.standard_normal((5, 8)),
               "GB": np.zeros(5)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixels", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "G", "GB"], ["scores"], transB=1)],
        "foreign",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return sum(v.size for v in weights.values())


def test_device_bench_foreign_model(device, tmp_path):
    bin_dir, _ = device
    params = foreign_model(tmp_path / "foreign.onnx")
    result = run(bin_dir, "edgekd", "bench", str(tmp_path / "foreign.onnx"), "--json", "--no-progress", "--runs",
                 "10", "--min-seconds", "0", "--batch-size", "1,4")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["models"]
    assert [r["batch_size"] for r in rows] == [1, 4]
    for row in rows:
        assert row["name"] == "foreign" and row["stage"] is None and row["params"] == params
        assert row["top1"] is None  # no eval set: latency only, on synthetic input
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["provider"] in ("cpu", "CPUExecutionProvider")


# the student search's device path (issue 27): two candidates far apart in size, so the device's
# timings order them whatever the load
SEARCH_SPACE = [
    {"arch": "edgenet", "arch_args": {"stem": 16, "stem_stride": 2, "stages": [[1, 16, 1]], "block": "basic"}},
    {"arch": "edgenet", "arch_args": {"stem": 64, "stem_stride": 1, "stages": [[2, 128, 1], [2, 128, 2]],
                                      "block": "basic"}},
]


def test_device_times_the_candidates_and_its_table_drives_the_search(device, tmp_path):
    """compress writes the candidates folder (export_candidates: what distill.search.export_only
    writes), the torch-free install times them into a latency table (`edgekd bench DIR
    --latency-table`), and the search of the main environment chooses with that table alone:
    the one candidate within a budget set between the two p50s the device measured."""
    import numpy as np
    import torch

    from edgekd.data.splits import DataSpec
    from edgekd.distill.config import DistillConfig
    from edgekd.models.zoo import build_model
    from edgekd.search.config import SearchConfig
    from edgekd.search.select import CandidateBuild, export_candidates, search_student
    from edgekd.train.plumbing import TrainData

    bin_dir, _ = device
    spec = DataSpec(name="tiny", channels=1, height=32, width=32, num_classes=3, class_names=("a", "b", "c"),
                    mean=(0.5,), std=(0.25,), source="tests")
    torch.manual_seed(0)
    teacher = build_model("tinycnn", in_channels=1, num_classes=3, width=4).eval()
    calib = np.random.default_rng(0).standard_normal((16, 1, 32, 32)).astype(np.float32)
    build = CandidateBuild(spec, calib, opset=17)
    folder = tmp_path / "candidates"
    manifest = export_candidates(SEARCH_SPACE, teacher, folder, build)

    table = tmp_path / "table.json"
    timed = run(bin_dir, "edgekd", "bench", str(folder), "--latency-table", str(table), "--threads", "1")
    assert timed.returncode == 0, timed.stdout + timed.stderr
    written = json.loads(table.read_text())
    assert written["provider"] == "cpu" and written["threads"] == 1 and written["opset"] == 17
    p50 = [row["int8_p50_ms"] for row in written["candidates"]]
    assert [row["id"] for row in written["candidates"]] == [e["id"] for e in manifest["candidates"]]
    assert p50[0] < p50[1], p50  # about 30x fewer multiply-accumulates
    # each candidate's fp32 model timed in the same rounds, for distill.search.min_int8_speedup
    assert all(row["fp32_p50_ms"] > 0 for row in written["candidates"])

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(48) % 3
    images = torch.randn(48, 1, 32, 32, generator=g) + labels.view(-1, 1, 1, 1).float()
    cfg = SearchConfig(latency_ms=float(np.sqrt(p50[0] * p50[1])), latency_table=str(table), threads=1,
                       proxy_epochs=1, proxy_images=24)
    result = search_student(teacher=teacher, data=TrainData.of(images[:36], labels[:36], images[36:], labels[36:]),
                            distill_cfg=DistillConfig(batch_size=12), cfg=cfg, folder=folder, build=build,
                            space=SEARCH_SPACE)
    assert result.winner == SEARCH_SPACE[0]
    assert result.timings.startswith(f"latency table {table}")
    assert [row["met"] for row in result.rows] == [True, False]
