"""Latency-targeted pruning: candidates are exported, quantized and timed against the
unpruned model in one interleaved loop until the measured p50 meets the target; the
compress chain runs it from a recipe; network slimming shrinks batch-norm scales."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.cost import count_macs
from edgekd.prune.channels import sparsity_train
from edgekd.prune.config import PruneConfig
from edgekd.prune.latency import Deployed, LatencyTarget, prune_to_latency
from edgekd.recipe import Recipe
from edgekd.runtime.config import BenchConfig
from edgekd.train.config import TrainConfig
from edgekd.train.plumbing import RunOptions, TrainData


class WideStack(nn.Module):
    """Four 3x3 conv-BN-ReLU layers at full 32x32 resolution: compute-bound (about 170 M
    MACs), so removing channels really lowers the int8 latency on a CPU."""

    def __init__(self, width=96):
        super().__init__()
        chans = [1, 32, width, width, width]
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(chans, chans[1:])
        ])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_prune_to_latency_reaches_a_speedup_measured_against_the_unpruned_model():
    torch.manual_seed(0)
    shape = (1, 32, 32)
    model = WideStack().eval()
    macs = count_macs(model, shape)
    calib = np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32)
    finetuned = []
    cfg = PruneConfig(target_speedup=1.3, ratio=0.7, latency_step=0.1, round_to=16, latency_rounds=15, finetune="end")
    pruned, result = prune_to_latency(model, input_shape=shape, cfg=cfg, calib_images=calib,
                                      deployed=Deployed(int8=True, bench=BenchConfig(threads=1)),
                                      finetune=finetuned.append)

    # the final measurement (after fine-tuning, twice the rounds) decides. Whether a shared CI
    # machine's timings meet the target varies (benchmarks/prune_fashion_mnist.py checks the
    # speed-up itself); the verdict must follow the measurement.
    final = result.final
    assert result.format == "int8"
    assert final["speedup"] == pytest.approx(final["reference_p50_ms"] / final["p50_ms"])
    assert result.met == (final["speedup"] >= 1.3)
    assert result.message.startswith("latency target met (") == result.met
    # every timed candidate is recorded; pruning stopped at the first one that met the target,
    # or at the largest share allowed
    steps = result.steps
    assert steps and not any(s["met"] for s in steps[:-1])
    assert steps[-1]["met"] or steps[-1]["removed"] == pytest.approx(0.7)  # the largest share allowed
    assert [s["step"] for s in steps] == sorted(s["step"] for s in steps)
    assert all(a["macs"] > b["macs"] for a, b in zip(steps, steps[1:]))
    assert all(s["p50_ms"] > 0 and s["reference_p50_ms"] > 0 and s["params"] > 0 for s in steps)
    assert finetuned == [len(steps)]  # fine-tuned once, at the end
    assert steps[-1]["macs"] == final["macs"] == count_macs(pruned, shape) < macs
    assert pruned(torch.randn(2, *shape)).shape == (2, 10)
    assert "met" in result.message and "1.3x faster" in result.target


def test_unreachable_target_says_what_was_reached():
    torch.manual_seed(0)
    shape = (1, 16, 16)
    model = WideStack(width=32).eval()
    calib = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    lines = []
    fp32_one_thread = Deployed(int8=False, bench=BenchConfig(threads=1))
    cfg = PruneConfig(target_latency_ms=1e-6, ratio=0.5, latency_step=0.25, round_to=8, latency_rounds=3)
    _, result = prune_to_latency(model, input_shape=shape, cfg=cfg, calib_images=calib, deployed=fp32_one_thread,
                                 log=lines.append)
    assert not result.met and result.format == "fp32"
    assert len(result.steps) == 2 and not any(s["met"] for s in result.steps)
    assert "not met" in result.message and "reached fp32 p50" in result.message
    assert lines[-1].startswith("[prune] warning: latency target not met (p50 <= 1e-06 ms)")

    # a target the unpruned model already meets: nothing is pruned
    model = WideStack(width=32).eval()
    macs = count_macs(model, shape)
    cfg = PruneConfig(target_latency_ms=1e6, ratio=0.5, latency_step=0.25, latency_rounds=3)
    _, result = prune_to_latency(model, input_shape=shape, cfg=cfg, calib_images=calib, deployed=fp32_one_thread)
    assert result.met and result.steps == [] and count_macs(model, shape) == macs == result.final["macs"]


def test_latency_settings_are_validated():
    with pytest.raises(ConfigError, match="target_latency_ms or prune.target_speedup"):
        LatencyTarget()
    assert LatencyTarget(latency_ms=2.0, speedup=1.5).met(4.0, 1.9)
    assert not LatencyTarget(latency_ms=2.0, speedup=1.5).met(2.5, 1.9)  # 1.32x < 1.5x
    with pytest.raises(ConfigError, match="latency_step must be between 0 and prune.ratio"):
        PruneConfig(ratio=0.3, latency_step=0.5)
    with pytest.raises(ConfigError, match="unknown prune.finetune 'never'; available: step, end"):
        Recipe.from_dict({"prune": {"finetune": "never"}})
    with pytest.raises(ConfigError, match="target_speedup must be positive"):
        Recipe.from_dict({"prune": {"target_speedup": 0}})
    assert Recipe.from_dict({"prune": {"target_speedup": 1.5}}).prune.latency_targeted
    assert not PruneConfig().latency_targeted


def test_sparsity_training_shrinks_batchnorm_scales():
    """Network slimming: the L1 penalty drives the BN scales down, compared with the same
    training (same seed, same data) without it."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    base = WideStack(width=16)
    scale_sums = {}
    for penalty in (0.0, 0.05):
        model = copy.deepcopy(base)
        sparsity_train(model, TrainData.of(x, y, x[:16], y[:16]),
                       TrainConfig(epochs=2, batch_size=8, lr=0.05, augment=False), RunOptions(progress=False),
                       penalty=penalty)
        scale_sums[penalty] = sum(m.weight.abs().sum().item() for m in model.modules()
                                  if isinstance(m, nn.BatchNorm2d))
    assert scale_sums[0.05] < 0.7 * scale_sums[0.0]  # measured: 44.7 vs 78.2
    with pytest.raises(ConfigError, match="needs batch-norm layers"):
        sparsity_train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), TrainData.of(x, y, x, y), TrainConfig(epochs=1),
                       RunOptions(progress=False), penalty=0.1)


def test_compress_prunes_to_a_latency_target(tmp_path):
    """`edgekd compress RECIPE`: distill -> prune (to a measured int8 speed-up, BN-scale
    importance after a sparsity phase, one KD fine-tune at the end) -> export -> quantize
    -> bench -> report."""
    import json

    import yaml
    from click.testing import CliRunner

    from edgekd.cli import main

    recipe = {
        "name": "prune-latency",
        "data": {"limit_train": 400, "limit_test": 100, "calib_size": 32},
        "teacher": {"arch": "tinycnn", "arch_args": {"width": 8}, "epochs": 1, "batch_size": 64, "augment": False},
        "distill": {"arch": "tinycnn", "arch_args": {"width": 64}, "epochs": 1, "batch_size": 64, "augment": False},
        "prune": {"enabled": True, "target_speedup": 1.2, "ratio": 0.6, "latency_step": 0.1, "round_to": 16,
                  "importance": "bn_scale", "sparsity": 1e-4, "sparsity_epochs": 1, "finetune": "end",
                  "epochs": 1, "batch_size": 64, "latency_rounds": 15},
        "quantize": {"max_drop": None},  # a one-epoch model: the accuracy budget is not under test
        "bench": {"warmup": 1, "runs": 5, "min_seconds": 0.0, "threads": 1},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(tmp_path / "recipe.yaml"), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "report.json").read_text())
    prune = report["stages"]["prune"]
    latency = prune["latency"]
    assert latency["format"] == "int8"
    # Whether the target is met depends on timings of a shared CI machine (the speed-up itself is
    # checked by benchmarks/prune_fashion_mnist.py); what must hold is that the stage says which.
    met = latency["final"]["speedup"] >= 1.2
    assert latency["met"] == met
    said = "[prune] latency target met (>= 1.2x faster than the unpruned model)" in result.output
    assert said == met, result.output
    assert latency["steps"] and latency["steps"][-1]["macs"] == prune["macs"] < prune["before"]["macs"]
    assert [h["step"] for h in prune["steps"]] == [len(latency["steps"])]  # one KD fine-tune, at the end
    assert prune["sparsity"]["epochs"] == 1
    # the deployed student is the pruned one, and report.md shows each timed step
    models = {m["stage"]: m for m in report["models"]}
    assert models["int8"]["macs"] == prune["macs"] and models["int8"]["int8_ops"] > 0
    md = (run_dir / "report.md").read_text()
    assert "## Pruning" in md and "| step | share removed | MACs | params | p50 ms |" in md
    assert md.count("x |") >= len(latency["steps"])
