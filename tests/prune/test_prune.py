"""Structured pruning: channels are physically removed through residual adds, depthwise
convolutions, concatenation and squeeze-and-excitation; shapes survive a save/reload
without pickled modules; the pruned model exports to ONNX and matches PyTorch."""

import json

import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.io.artifacts import load_weights, save_weights
from edgekd.models.cost import count_macs, count_params
from edgekd.models.shapes import layer_shapes, rebuild
from edgekd.models.zoo import build_model
from edgekd.onnx_export import ExportConfig, to_onnx
from edgekd.prune.channels import PrunePlan, channel_table, prune_channels
from edgekd.prune.importance import default_protected

INPUT = (1, 16, 16)


class ConcatSE(nn.Module):
    """Two branches concatenated (DenseNet-style), then a squeeze-and-excitation gate."""

    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        gate = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = self.mix(x * gate)
        return self.fc(x.mean((2, 3)))


def make(name):
    torch.manual_seed(0)
    if name == "concat_se":
        return ConcatSE()
    args = {"resnet20": {"width": 0.5}, "mobilenetv2": {"width": 0.25, "last_channels": 128}}[name]
    return build_model(name, in_channels=1, num_classes=10, **args)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "concat_se"])
def test_pruning_removes_channels_and_keeps_outputs(name, tmp_path):
    model = make(name).eval()
    x = torch.randn(3, *INPUT)
    params, macs = count_params(model), count_macs(model, INPUT)
    before = channel_table(model)
    prune_channels(model, PrunePlan(ratio=0.5, importance="l1", round_to=None), input_shape=INPUT)
    after = channel_table(model)

    # the requested share of channels is gone from the layers that may be pruned...
    protected = default_protected(model)
    prunable = [k for k in before if k not in protected and after[k] != before[k]]
    kept = sum(after[k] for k in prunable) / sum(before[k] for k in prunable)
    assert kept == pytest.approx(0.5, abs=0.05)
    # ...and with them parameters and MACs (a conv between two pruned layers keeps 0.5^2)
    assert count_params(model) < 0.65 * params
    assert count_macs(model, INPUT) < 0.65 * macs
    assert model(x).shape == (3, 10)  # classes unchanged
    assert after[protected[-1]] == before[protected[-1]] == 10
    assert after[protected[0]] == before[protected[0]]  # the protected first conv keeps its channels
    assert any(after[k] < before[k] for k in before)

    # ONNX export of the pruned model matches PyTorch
    report = to_onnx(model, tmp_path / "pruned.onnx", input_shape=INPUT, metadata={}, cfg=ExportConfig())
    assert max(report.max_abs_diff.values()) <= 1e-4

    # save/reload without pickled modules: shapes as JSON, weights as safetensors
    (tmp_path / "shapes.json").write_text(json.dumps(layer_shapes(model)))
    save_weights(model, tmp_path / "pruned.safetensors")
    fresh = rebuild(make(name), json.loads((tmp_path / "shapes.json").read_text()))
    load_weights(fresh, tmp_path / "pruned.safetensors")
    fresh.eval()
    assert torch.equal(fresh(x), model(x))


def test_round_to_keeps_channel_multiples():
    model = make("resnet20")
    prune_channels(model, PrunePlan(ratio=0.4, importance="l2", round_to=8), input_shape=INPUT)
    protected = set(default_protected(model))
    for name, channels in channel_table(model).items():
        if name not in protected:
            assert channels % 8 == 0, (name, channels)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random", "taylor"])
def test_each_importance_prunes(importance):
    model = make("resnet20")
    batch = (torch.randn(8, *INPUT), torch.randint(0, 10, (8,)))
    params = count_params(model)
    prune_channels(model, PrunePlan(ratio=0.3, importance=importance, steps=2), input_shape=INPUT, loss_batch=batch)
    assert count_params(model) < params
    assert model(batch[0]).shape == (8, 10)


def test_target_macs_stops_at_the_first_step_at_or_below_it():
    model = make("resnet20")
    macs = count_macs(model, INPUT)
    steps = []
    prune_channels(model, PrunePlan(ratio=0.8, steps=8, round_to=None, target_macs=int(0.6 * macs)), input_shape=INPUT,
                   after_step=steps.append)
    # 0.1 of the channels per step: about 0.9^2 = 0.81, 0.64, 0.49 of the MACs after steps 1-3
    assert count_macs(model, INPUT) <= 0.6 * macs
    assert count_macs(model, INPUT) > 0.3 * macs  # stopped long before ratio 0.8 (0.04 of the MACs)
    assert steps == [1, 2, 3]


def test_target_params_stops_at_the_first_step_at_or_below_it():
    model = make("mobilenetv2")
    params = count_params(model)
    steps = []
    prune_channels(model, PrunePlan(ratio=0.8, steps=8, round_to=None, target_params=int(0.7 * params)),
                   input_shape=INPUT, after_step=steps.append)
    assert count_params(model) <= 0.7 * params
    assert count_params(model) > 0.2 * params  # stopped long before ratio 0.8
    assert len(steps) < 8
    assert model(torch.zeros(2, *INPUT)).shape == (2, 10)


def test_protected_layer_keeps_its_channels():
    model = make("concat_se")
    prune_channels(model, PrunePlan(ratio=0.5, protect=["branch_a.0"], round_to=None), input_shape=INPUT)
    assert model.branch_a[0].out_channels == 16


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown pruning importance 'l3'"):
        prune_channels(make("resnet20"), PrunePlan(ratio=0.5, importance="l3"), input_shape=INPUT)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        prune_channels(make("resnet20"), PrunePlan(ratio=1.5), input_shape=INPUT)
    with pytest.raises(ConfigError, match="unknown layers: nope"):
        prune_channels(make("resnet20"), PrunePlan(ratio=0.5, protect=["nope"]), input_shape=INPUT)
    with pytest.raises(ConfigError, match="does not fit|do not fit"):
        rebuild(make("resnet20"), {"fc": {"type": "Conv2d", "in": 1, "out": 1, "groups": 1}})


def test_compress_with_pruning_stage(tmp_path):
    """distill -> prune -> export -> quantize -> bench from one recipe."""
    import onnx

    from edgekd.pipeline.chain import compress
    from edgekd.pipeline.export_command import ExportRequest, export_one
    from edgekd.recipe import Recipe

    recipe = Recipe.from_dict({
        "name": "prune",
        "data": {"limit_train": 600, "limit_test": 100, "calib_size": 32},
        "teacher": {"arch": "tinycnn", "arch_args": {"width": 16}, "epochs": 1, "batch_size": 32, "augment": False},
        "distill": {"arch": "tinycnn", "arch_args": {"width": 16}, "epochs": 1, "batch_size": 32, "augment": False},
        "prune": {"enabled": True, "ratio": 0.5, "round_to": 4, "steps": 2, "epochs": 1, "batch_size": 32},
        "quantize": {"max_drop": 2.0},  # 59 val images cannot judge 1 point (the allowed drop stays 5.1)
        "bench": {"warmup": 1, "runs": 5, "min_seconds": 0.0},
    })
    run_dir = tmp_path / "run"
    report = compress(recipe, run_dir, progress=False, log=lambda line: None)
    pruned = report["stages"]["prune"]
    assert pruned["enabled"] and len(pruned["steps"]) == 2  # a KD fine-tune after each step
    assert pruned["after"]["macs"] < 0.5 * pruned["before"]["macs"]
    # width 16 -> 8 on the inner layers: channel counts halved and multiples of round_to
    assert pruned["before"]["channels"]["features.2.0"] == 32
    assert pruned["after"]["channels"]["features.2.0"] == 16
    # the exported student is the pruned one
    meta = {p.key: p.value for p in onnx.load(str(run_dir / "model.fp32.onnx")).metadata_props}
    assert int(meta["edgekd.params"]) == pruned["params"]
    models = {m["stage"]: m for m in report["models"]}
    assert models["student"]["params"] == pruned["params"] and models["int8"]["int8_ops"] > 0
    # `edgekd export RUN_DIR` rebuilds the pruned student from its plain-data shapes
    result = export_one(ExportRequest(run_dir=run_dir, output=tmp_path / "again.onnx"))
    assert max(result["max_abs_diff"].values()) <= 1e-4
