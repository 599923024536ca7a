"""edgekd.models.bn.recalibrate_batch_norm: running statistics recomputed exactly for the
current weights, frozen layers and the model's mode left alone."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models.bn import recalibrate_batch_norm
from edgekd.train.transfer import HeadOnly


def net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(dropout), nn.BatchNorm2d(4, momentum=0.01),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def batches(n: int = 4, size: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 1, 8, 8, generator=g) * 2 + 1 for _ in range(n)]


def test_statistics_are_the_average_over_the_batches():
    model = net().eval()
    bn = model[2]
    data = batches()
    with torch.no_grad():
        outs = [model[0](x) for x in data]
    expected_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    expected_var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert recalibrate_batch_norm(model, data) == 64
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.01 and not model.training and not bn.training  # restored


def test_dropout_is_off_while_measuring():
    plain, dropped = net(0.0), net(0.9)
    recalibrate_batch_norm(plain, batches())
    recalibrate_batch_norm(dropped, batches())
    torch.testing.assert_close(dropped[2].running_mean, plain[2].running_mean)
    assert dropped.training  # the mode it had


def test_max_images_and_no_batches():
    model = net()
    assert recalibrate_batch_norm(model, batches(n=10), max_images=32) == 32
    before = model[2].running_mean.clone()
    assert recalibrate_batch_norm(model, []) == 0
    assert torch.equal(model[2].running_mean, before)  # nothing to measure: the statistics are kept


def test_frozen_layers_of_a_wrapper_keep_their_statistics():
    model = net()
    frozen = HeadOnly(model, "6")  # the backbone's batch norm stays in eval mode while training
    before = model[2].running_mean.clone()
    assert recalibrate_batch_norm(frozen, batches()) == 0
    assert torch.equal(model[2].running_mean, before)


def test_eval_accuracy_follows_the_weights_after_recalibration():
    """Statistics that lag behind the weights (here: set for another input scale) give other
    eval outputs than the batch statistics; after recalibration on the same data they agree."""
    model = net()
    data = torch.cat(batches(n=2, size=64))
    with torch.no_grad():
        train_mode = model.train()(data)
        stale = model.eval()(data)
        recalibrate_batch_norm(model, [data])
        fresh = model.eval()(data)
    assert not torch.allclose(stale, train_mode, atol=1e-2)
    torch.testing.assert_close(fresh, train_mode, atol=2e-3, rtol=1e-2)
