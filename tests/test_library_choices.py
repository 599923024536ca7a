"""Where edgekd keeps its own code beside torch.optim.swa_utils, the stated reasons hold:
update_bn resets a wrapper's frozen batch-norm layers (and, with no batch, every layer's)
statistics (models/bn.py keeps both); AveragedModel with get_ema_multi_avg_fn copies the
student on its first update, has no decay warm-up, and names its state differently
(distill/schemes.py keeps the warm-up and the checkpoint keys). If torch changes, these fail
and the choice can be looked at again."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from edgekd.distill.schemes import StudentWithEma, ema_decay_at, ema_update
from edgekd.models.bn import recalibrate_batch_norm
from edgekd.train.transfer import HeadOnly


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 8, generator=g) * 2 + 1 for _ in range(3)]


def test_update_bn_matches_ours_on_a_plain_model():
    ours, theirs = net(), net()
    recalibrate_batch_norm(ours, batches())
    update_bn(batches(), theirs)
    torch.testing.assert_close(ours[1].running_mean, theirs[1].running_mean)
    torch.testing.assert_close(ours[1].running_var, theirs[1].running_var)


def test_update_bn_recomputes_frozen_layers_and_forgets_on_no_batch():
    model, ours = net(), net()
    for m in (model, ours):
        m[1].running_mean.fill_(0.5)  # pretrained statistics of a frozen backbone
    update_bn(batches(), HeadOnly(model, "5"))  # resets them, then measures nothing (eval mode)
    assert torch.equal(model[1].running_mean, torch.zeros(4))
    assert recalibrate_batch_norm(HeadOnly(ours, "5"), batches()) == 0  # ours keeps them
    assert torch.equal(ours[1].running_mean, torch.full((4,), 0.5))
    empty = net()
    update_bn([], empty)
    assert torch.equal(empty[1].running_mean, torch.zeros(4))  # reset, not restored
    kept = net()
    kept[1].running_mean.fill_(0.5)
    recalibrate_batch_norm(kept, [])
    assert torch.equal(kept[1].running_mean, torch.full((4,), 0.5))


def test_averaged_model_has_no_warm_up_and_other_state_keys():
    student = net()
    pair = StudentWithEma(student)
    averaged = AveragedModel(copy.deepcopy(student), multi_avg_fn=get_ema_multi_avg_fn(0.999))
    averaged.update_parameters(student)  # its first update copies the student
    with torch.no_grad():
        student[5].weight.add_(1.0)
    pair.before_step(0.999)  # the first step: nothing folded in yet
    pair.before_step(0.999)  # folds in the changed student with the warm-up decay 0.1
    averaged.update_parameters(student)  # decay 0.999 from the start
    assert ema_decay_at(0.999, 0) == 0.1
    ours_moved = (pair.ema[5].weight - averaged.module[5].weight).abs().max()
    assert ours_moved > 0.5  # ours followed the student (0.9 of the change), theirs barely (0.001)
    assert set(pair.state_dict()) != {f"ema.{k}" for k in averaged.state_dict()} | {"steps"}
    assert "n_averaged" in averaged.state_dict() and "ema.1.running_mean" in pair.state_dict()


def test_ema_update_folds_floats_and_copies_counts():
    ema, model = net(), net()
    with torch.no_grad():
        model[5].bias.fill_(1.0)
        ema[5].bias.fill_(0.0)
    model[1].num_batches_tracked.fill_(7)
    ema_update(ema, model, 0.75)
    torch.testing.assert_close(ema[5].bias, torch.full((3,), 0.25))
    assert int(ema[1].num_batches_tracked) == 7
