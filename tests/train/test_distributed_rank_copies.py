"""Under torchrun each rank other than 0 trains in its own copy of the run, inside the run
(state/rank<N>), never in $TMPDIR; rank 0 removes copies that a rank killed -9 left, on resume
(issue 25, class 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.train import distributed

pytestmark = pytest.mark.slow  # torchrun

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def test_a_resumed_rank_copies_what_training_reads_only(tmp_path, monkeypatch):
    run = tmp_path / "run"
    files = ["recipe.yaml", "teacher.safetensors", "pruned.shapes.json", "state/progress.json",
             "state/teacher.ckpt", "eval.npz", "model.fp32.onnx", "teacher.fp32.onnx", "report.json", "report.md",
             "results.csv", "pareto.png", "export/student.fp32.onnx", "state/rank3/recipe.yaml",
             "state/run.lock", "state/.progress.json.x1.tmp"]
    for name in files:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    work = distributed.rank_copy(run)
    assert work == run / "state" / "rank1"
    distributed.copy_for_rank(run, work)
    copied = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    assert copied == ["pruned.shapes.json", "recipe.yaml", "state/progress.json", "state/teacher.ckpt",
                      "teacher.safetensors"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "state" / "rank9").symlink_to(outside, target_is_directory=True)
    distributed.remove_rank_copies(run)
    assert not work.exists() and not (run / "state" / "rank3").exists()
    assert outside.is_dir() and (run / "state" / "rank9").is_symlink()  # a link is never followed
    assert (run / "state" / "teacher.ckpt").is_file() and (run / "eval.npz").is_file()


def _run_copies_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("recipe.yaml"))


def test_a_rank_killed_9_leaves_its_copy_inside_the_run_and_resume_removes_it(tiny_run_inputs, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmpdir)}
    run = tmp_path / "run"
    lock = run / "state" / "rank1" / "state" / "run.lock"  # rank 1's copy holds its own lock, naming its pid
    proc = subprocess.Popen([*TORCHRUN, "-m", "edgekd", "compress", str(tiny_run_inputs / "tiny.yaml"),
                             "--set", "teacher.epochs=30", "--out", str(run), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 150
    while not ((run / "state" / "teacher.ckpt").is_file() and lock.is_file() and lock.stat().st_size):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "rank 1's copy did not appear inside the run"
        time.sleep(0.05)
    os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert (run / "state" / "rank1").is_dir()  # left by the killed rank, inside the run it belongs to
    assert _run_copies_in(tmpdir) == []

    # any resume starts with it (a resume under torchrun: tests/train/test_distributed.py)
    resumed = CliRunner().invoke(main, ["compress", "--resume", str(run), "--set", "teacher.epochs=1",
                                        "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert (run / "report.json").is_file()
    assert sorted(p.name for p in (run / "state").iterdir() if p.name.startswith("rank")) == []
    assert _run_copies_in(tmpdir) == [] and _run_copies_in(run / "state") == []
