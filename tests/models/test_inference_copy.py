"""The inference copy: the same function as the model's eval mode, with RepConv branches fused and
batch norms folded into their convolutions; the model itself untouched; models fx cannot trace,
or with forward hooks, run unfolded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.models.blocks import RepConv
from edgekd.models.inference import inference_copy
from edgekd.models.zoo import build_model
from edgekd.train.evaluate import predict


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with non-trivial running statistics and affine parameters (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name, arch_args", [
    ("resnet8", {}),
    ("edgenet", {"stem": 16, "stages": [[1, 16, 1], [1, 32, 2]], "block": "basic"}),
    ("edgenet", {"stem": 16, "stem_stride": 2, "stages": [[2, 16, 1], [1, 32, 2]], "block": "rep_ac"}),
    ("edgenet", {"stem": 16, "stages": [[1, 16, 1], [1, 32, 2]], "block": "inverted", "expand": 2}),
])
def test_same_function_without_batch_norms_and_the_model_untouched(name, arch_args):
    model = _with_statistics(build_model(name, num_classes=10, in_channels=1, **arch_args)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    copy = inference_copy(model)

    assert copy is not model and _batch_norms(copy) == 0
    assert not any(isinstance(m, RepConv) for m in copy.modules())
    assert model.training and _batch_norms(model) > 0  # mode and layers as they were
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(copy(x), expected, atol=1e-4, rtol=1e-4)
        for p in copy.parameters():  # the copy owns its weights
            p.add_(1.0)
        torch.testing.assert_close(model(x), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _Untraceable(nn.Module):
    """Python control flow on the input: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_untraceable_model_runs_unfolded():
    model = _with_statistics(_Untraceable())
    x = torch.randn(4, 1, 8, 8)
    copy = inference_copy(model)
    assert _batch_norms(copy) == 1
    with torch.no_grad():
        torch.testing.assert_close(copy.eval()(x), model.eval()(x))


def test_model_with_forward_hooks_keeps_its_layers():
    """A feature term's hook on a batch norm must still fire: no folding then."""
    model = _with_statistics(build_model("resnet8", num_classes=10, in_channels=1))
    seen = []
    model.get_submodule("layers.0.bn1").register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    copy = inference_copy(model)
    assert _batch_norms(copy) == _batch_norms(model)
    with torch.no_grad():
        copy.eval()(torch.randn(2, 1, 28, 28))
    assert seen


def test_predict_gives_the_eval_mode_logits():
    model = _with_statistics(build_model("edgenet", num_classes=10, in_channels=1, **{
        "stem": 16, "stages": [[1, 16, 1], [1, 32, 2]], "block": "rep"})).train()
    x = torch.randn(20, 1, 28, 28)
    logits = predict(model, x, batch_size=8)
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(x), atol=1e-4, rtol=1e-4)


class _Odd(nn.Module):
    """Batch norms folding must leave or handle: without affine parameters (folds as scale 1,
    shift 0), without running statistics (eval mode uses the batch's: left), and a convolution
    run twice (folding the norm after one call would change the other: left)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False)
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.bn_a(self.conv_a(x))
        x = self.bn_b(self.conv_b(x))
        x = self.bn_c(self.conv_c(x)) + self.conv_c(x)
        return self.fc(x.mean((2, 3)))


def test_folds_only_what_keeps_the_function():
    model = _with_statistics(_Odd())
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    copy = inference_copy(model)
    left = {type(m).__name__ + str(m.track_running_stats) for m in copy.modules() if isinstance(m, nn.BatchNorm2d)}
    assert left == {"BatchNorm2dFalse", "BatchNorm2dTrue"}  # bn_b and bn_c stay; bn_a is folded
    assert not any(p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model.eval()(x), atol=1e-5, rtol=1e-5)
