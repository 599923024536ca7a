"""Data-parallel training under torchrun on the CPU (gloo): edgekd.train.distributed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # torchrun and subprocesses

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Trains a batch-norm-free model (so that per-rank batch statistics cannot differ) with the
# one training loop, from the same seed, and saves the weights: under torchrun each rank
# trains on half of every global batch and the gradients are averaged.
FIT = """
import sys, torch
from torch import nn
from edgekd.train import distributed
from edgekd.train.config import TrainConfig
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData
torch.set_num_threads(1)
distributed.setup("cpu")
g = torch.Generator().manual_seed(0)
x = torch.randn(256, 1, 8, 8, generator=g)
y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0.5).long()
torch.manual_seed(1)
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
cfg = TrainConfig(epochs=3, batch_size=32, lr=0.01, augment=True)
fit(model, cross_entropy_step(model), TrainData.of(x, y, x[:64], y[:64]), cfg, RunOptions(seed=0, progress=False))
if distributed.is_main():
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[1])
distributed.teardown()
"""


def test_two_ranks_train_to_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    import torch

    script = tmp_path / "fit.py"
    script.write_text(FIT)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(script), str(one)], env=ENV, check=True, timeout=120)
    result = subprocess.run([*TORCHRUN, str(script), str(two)], env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    # the same steps; the only difference is the order of float additions in the averaged gradients
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (children of its agent)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e for e in env if e.startswith(b"RANK=")]
        if ranks and _descends(int(proc.name), parent):
            found[int(ranks[0][5:])] = int(proc.name)
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


def test_sigterm_to_one_rank_stops_all_and_resume_completes(tmp_path):
    run = tmp_path / "run"
    args = ["-m", "edgekd", "compress", "--set", "teacher.epochs=4", "--set", "distill.epochs=1",
            "--set", "data.limit_train=3000", "--set", "bench.runs=5", "--set", "bench.min_seconds=0",
            "--out", str(run), "--no-progress", "--deterministic"]
    proc = subprocess.Popen([*TORCHRUN, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    deadline = time.monotonic() + 150
    while not (run / "state" / "teacher.ckpt").is_file():  # rank 0 wrote its first epoch's checkpoint
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    workers = _workers(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun stops the other rank and fails
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers.values())
    assert not (run / "report.json").exists()
    resumed = subprocess.run([*TORCHRUN, "-m", "edgekd", "compress", "--resume", str(run), "--no-progress"], env=ENV,
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[teacher] resuming after epoch" in resumed.stderr
    report = json.loads((run / "report.json").read_text())
    assert {m["stage"] for m in report["models"]} == {"teacher", "student", "int8"}


def test_what_ranks_cannot_do_together_is_refused(tmp_path):
    from edgekd.errors import ConfigError
    from edgekd.pipeline.chain import check_distributable
    from edgekd.recipe import Recipe

    with pytest.raises(ConfigError, match="qat"):
        check_distributable(Recipe.from_dict({"quantize": {"method": "qat"}}))
    with pytest.raises(ConfigError, match="latency"):
        check_distributable(Recipe.from_dict({"prune": {"enabled": True, "target_speedup": 1.5}}))
    check_distributable(Recipe())
