"""Tests for edgekd.distill.schemes: mutual learning losses by hand, detached targets, the best
peer; born-again generations start fresh and learn from the one before; the EMA rule by
hand and the EMA teacher without gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekd.distill import schemes
from edgekd.distill.config import DistillConfig
from edgekd.distill.schemes import (
    Cohort,
    StudentWithEma,
    born_again,
    ema_decay_at,
    ema_self_distill,
    ema_step,
    ema_update,
    mutual_learning,
    mutual_losses,
    mutual_step,
)
from edgekd.train.plumbing import RunOptions, TrainData


def softmax(values, t=1.0):
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def cfg(**kw):
    base = dict(arch="tinycnn", epochs=1, batch_size=16, lr=0.05, weight_decay=0.0, augment=False, temperature=2.0,
                alpha=0.5)
    return DistillConfig(**{**base, **kw})


# -- deep mutual learning: the loss by hand ------------------------------------------------------


def test_two_peer_losses_by_hand():
    z0, z1, y = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 1
    # T = 2: softmax(z0/2) = [0.30720, 0.50648, 0.18632], softmax(z1/2) = [0.50648, 0.18632, 0.30720]
    # KL(p1 || p0) = 0.50648*0.5 + 0.18632*(-1) + 0.30720*0.5 = 0.22051; by symmetry of this pair
    # KL(p0 || p1) = 0.30720*(-0.5) + 0.50648*1 + 0.18632*(-0.5) = 0.25972
    # CE(z0, 1) = 0.40761, CE(z1, 1) = -log(1 / (e^2 + 1 + e^1)) = 2.40761
    # L0 = 0.5 * 0.40761 + 0.5 * 4 * 0.22051 = 0.64483; L1 = 0.5 * 2.40761 + 0.5 * 4 * 0.25972 = 1.72325
    p0, p1 = softmax(z0, 2.0), softmax(z1, 2.0)
    expected0 = 0.5 * -math.log(softmax(z0)[y]) + 0.5 * 4 * kl(p1, p0)
    expected1 = 0.5 * -math.log(softmax(z1)[y]) + 0.5 * 4 * kl(p0, p1)
    assert expected0 == pytest.approx(0.64483, abs=1e-4)
    assert expected1 == pytest.approx(1.72325, abs=1e-4)
    losses = mutual_losses([torch.tensor([z0]), torch.tensor([z1])], torch.tensor([y]), temperature=2.0, alpha=0.5)
    assert [loss.item() for loss in losses] == pytest.approx([expected0, expected1], rel=1e-5)


def test_three_peers_average_the_others():
    z = [[1.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    y = 0
    p = [softmax(v) for v in z]  # T = 1
    # peer 0 learns from the mean of KL(p1 || p0) and KL(p2 || p0); alpha 1: no CE
    expected = [sum(kl(p[j], p[k]) for j in range(3) if j != k) / 2 for k in range(3)]
    losses = mutual_losses([torch.tensor([v]) for v in z], torch.tensor([y]), temperature=1.0, alpha=1.0)
    assert [loss.item() for loss in losses] == pytest.approx(expected, rel=1e-5)
    # and alpha 0 is plain cross-entropy, the peers do not matter
    ce = mutual_losses([torch.tensor([v]) for v in z], torch.tensor([y]), temperature=1.0, alpha=0.0)
    assert [c.item() for c in ce] == pytest.approx([-math.log(softmax(v)[y]) for v in z], rel=1e-5)


def test_peer_targets_are_detached():
    z0 = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    z1 = torch.tensor([[2.0, 0.0, 1.0]], requires_grad=True)
    losses = mutual_losses([z0, z1], torch.tensor([1]), temperature=2.0, alpha=0.5)
    losses[0].backward()
    assert z1.grad is None  # peer 0's loss never reaches peer 1
    assert z0.grad is not None and z0.grad.abs().sum() > 0
    # the gradient on z0 is the one with z1 a constant: (1-a)(softmax(z0) - e_y) + a*T*(p0_T - p1_T)
    p0, p1 = torch.tensor(softmax([1, 2, 0], 2.0)), torch.tensor(softmax([2, 0, 1], 2.0))
    s = torch.tensor(softmax([1, 2, 0]))
    expected = 0.5 * (s - torch.tensor([0.0, 1.0, 0.0])) + 0.5 * 2.0 * (p0 - p1)
    assert torch.allclose(z0.grad[0], expected, atol=1e-6)


def test_one_step_updates_every_peer_with_its_own_gradient():
    torch.manual_seed(0)
    peers = [nn.Linear(2, 2), nn.Linear(2, 2)]
    cohort = Cohort(peers)
    before = [p.weight.detach().clone() for p in peers]
    x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    loss, logits = mutual_step(cohort, cfg())(x, y, None)
    assert logits.shape == (8, 2) and not logits.requires_grad
    loss.backward()
    # the summed loss gives each peer exactly the gradient of its own loss
    own = mutual_losses([peers[0](x), peers[1](x).detach()], y, temperature=2.0, alpha=0.5)[0]
    grad0 = torch.autograd.grad(own, peers[0].weight)[0]
    assert torch.allclose(peers[0].weight.grad, grad0, atol=1e-6)
    torch.optim.SGD(cohort.parameters(), lr=0.1).step()
    assert all(not torch.equal(b, p.weight) for b, p in zip(before, peers))


def _fixed_linear(sign: float) -> nn.Linear:
    """Logit 1 - logit 0 = sign * 2 * (x0 + x1): sign +1 is perfect on `separable`, -1 always wrong."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]) * sign)
        layer.bias.zero_()
    return layer


def test_best_peer_by_val_becomes_the_student(separable):
    peers = [_fixed_linear(-1.0), _fixed_linear(+1.0)]
    result = mutual_learning(peers, TrainData.of(**separable), cfg(epochs=0), RunOptions(progress=False))
    assert result.details["peers_val_top1"] == [0.0, 100.0]
    assert result.details["best_peer"] == 1 and result.student is peers[1]


def test_mutual_learning_trains_both_peers(separable):
    torch.manual_seed(0)
    peers = [nn.Linear(2, 2), nn.Linear(2, 2)]
    result = mutual_learning(peers, TrainData.of(**separable), cfg(epochs=5, lr=0.05, temperature=1.0),
                             RunOptions(progress=False))
    assert len(result.fit.epochs) == 5
    assert min(result.details["peers_val_top1"]) >= 95.0


# -- born-again ---------------------------------------------------------------------------


def test_born_again_generations_start_fresh_and_learn_from_the_previous(separable, monkeypatch):
    import edgekd.distill.offline as distill_module

    calls, fresh = [], {}
    real = distill_module.distill

    def recording(student, teacher, *args, **kw):
        calls.append((student, teacher))
        return real(student, teacher, *args, **kw)

    monkeypatch.setattr(distill_module, "distill", recording)
    teacher = _fixed_linear(+1.0)
    torch.manual_seed(0)
    first = nn.Linear(2, 2)

    def make_student(k):
        torch.manual_seed(100 + k)
        model = nn.Linear(2, 2)
        fresh[k] = model.weight.detach().clone()
        return model

    result = born_again(first, teacher, TrainData.of(**separable), cfg(epochs=3, lr=0.05, generations=3),
                        RunOptions(progress=False), make_student=make_student)
    assert len(calls) == 3 and sorted(fresh) == [2, 3]
    gen1, gen2, gen3 = (student for student, _ in calls)
    assert calls[0] == (first, teacher)
    assert calls[1][1] is gen1 and calls[2][1] is gen2  # each generation's teacher is the one before
    # generation 2 started from its own fresh initialization, not from generation 1's weights
    torch.manual_seed(102)
    assert torch.equal(fresh[2], nn.Linear(2, 2).weight)
    assert gen2 is not gen1 and not torch.equal(fresh[2], gen1.weight)
    tops = [g["val_top1"] for g in result.details["generations"]]
    assert len(tops) == 3 and min(tops) >= 90.0  # each learned from its teacher
    best = tops.index(max(tops))
    assert result.details["best_generation"] == best + 1 and result.student is (gen1, gen2, gen3)[best]
    # a generation that taught the next is given back trainable: the best one is fine-tuned later
    # (pruning, QAT), and its frozen parameters made that fail ("does not require grad")
    for model in (gen1, gen2, gen3):
        assert all(p.requires_grad for p in model.parameters()) and model.training


def test_distill_gives_the_teacher_back_as_it_was(separable):
    """The teacher is frozen and in eval mode while it teaches, then has its own mode and
    requires_grad flags again (mixed ones included)."""
    from edgekd.distill.offline import distill

    teacher = _fixed_linear(+1.0).train()
    teacher.bias.requires_grad_(False)
    seen = []
    teacher.register_forward_pre_hook(lambda m, _: seen.append((m.training, m.weight.requires_grad)))
    torch.manual_seed(0)
    distill(nn.Linear(2, 2), teacher, TrainData.of(**separable), cfg(epochs=1), RunOptions(progress=False))
    assert seen and set(seen) == {(False, False)}  # while teaching
    assert teacher.training and teacher.weight.requires_grad and not teacher.bias.requires_grad


def test_born_again_without_teacher_trains_generation_one_on_labels(separable):
    torch.manual_seed(0)
    result = born_again(nn.Linear(2, 2), None, TrainData.of(**separable), cfg(epochs=3, lr=0.05, generations=2),
                        RunOptions(progress=False), make_student=lambda k: nn.Linear(2, 2))
    assert [g["generation"] for g in result.details["generations"]] == [1, 2]
    assert result.details["generations"][0]["val_top1"] >= 90.0


# -- EMA teacher --------------------------------------------------------------------------


def test_ema_decay_warm_up_by_hand():
    assert ema_decay_at(0.999, 0) == pytest.approx(1 / 10)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.999, 10_000) == 0.999
    assert ema_decay_at(0.5, 100) == 0.5


def test_ema_update_by_hand():
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    ema = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        ema[0].weight.fill_(1.0), ema[0].bias.fill_(0.0)
        model[0].weight.fill_(3.0), model[0].bias.fill_(-2.0)
        ema[1].running_mean.fill_(0.0), model[1].running_mean.fill_(1.0)
        ema[1].running_var.fill_(1.0), model[1].running_var.fill_(5.0)
        model[1].num_batches_tracked.fill_(7)
    ema_update(ema, model, decay=0.9)
    # 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * 0 + 0.1 * -2 = -0.2; buffers too: 0.1, 0.9 + 0.5 = 1.4
    assert ema[0].weight.item() == pytest.approx(1.2)
    assert ema[0].bias.item() == pytest.approx(-0.2)
    assert ema[1].running_mean.item() == pytest.approx(0.1)
    assert ema[1].running_var.item() == pytest.approx(1.4)
    assert int(ema[1].num_batches_tracked) == 7  # integer buffers are copied
    assert model[0].weight.item() == 3.0  # the student is untouched


def test_ema_step_updates_after_each_optimizer_step_and_gets_no_gradient():
    torch.manual_seed(0)
    pair = StudentWithEma(nn.Linear(2, 3))
    assert all(not p.requires_grad for p in pair.ema.parameters())
    optimizer = torch.optim.SGD([p for p in pair.parameters() if p.requires_grad], lr=0.5)
    assert len(optimizer.param_groups[0]["params"]) == 2  # the student's weight and bias only
    step = ema_step(pair, cfg(ema_decay=0.999))
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    initial = pair.student.weight.detach().clone()
    loss, _ = step(x, y, None)  # first step: nothing to fold in yet
    assert torch.equal(pair.ema.weight, initial)
    loss.backward()
    assert all(p.grad is None for p in pair.ema.parameters())
    optimizer.step()
    optimizer.zero_grad()
    after_one = pair.student.weight.detach().clone()
    step(x, y, None)  # folds in the first optimizer step: decay min(0.999, 1/10) = 0.1
    assert torch.allclose(pair.ema.weight, 0.1 * initial + 0.9 * after_one, atol=1e-7)
    assert int(pair.steps) == 2


def test_ema_self_distill_picks_the_better_of_student_and_ema(separable):
    torch.manual_seed(0)
    result = ema_self_distill(nn.Linear(2, 2), TrainData.of(**separable), cfg(epochs=6, ema_decay=0.9),
                              RunOptions(progress=False))
    d = result.details
    assert d["ema_updates"] > 0
    assert d["continues"] == ("ema" if d["ema_val_top1"] > d["student_val_top1"] else "student")
    assert max(d["ema_val_top1"], d["student_val_top1"]) >= 90.0
    assert all(p.requires_grad for p in result.student.parameters())  # trainable for later stages


# -- recipe fields --------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("scheme", "mutual", "unknown distill.scheme 'mutual'; available: offline, online, born-again, ema"),
    ("peers", 1, "distill.peers must be >= 2"),
    ("generations", 0, "distill.generations must be >= 1"),
    ("ema_decay", 1.0, "distill.ema_decay must be between 0 and 1"),
])
def test_recipe_rejects_bad_scheme_fields(field, value, message):
    from edgekd.errors import ConfigError
    from edgekd.recipe import Recipe

    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict({"distill": {field: value}})


@pytest.mark.parametrize("scheme", ["online", "ema"])
@pytest.mark.parametrize("field,value", [
    ("terms", [{"kind": "rkd"}]),
    ("extra_teachers", [{"arch": "resnet8", "epochs": 1}]),
])
def test_recipe_rejects_teacher_fields_for_schemes_without_a_teacher(scheme, field, value):
    """Mutual learning and the EMA teacher never read the teacher: terms or extra teachers
    would be ignored silently, so the recipe is refused instead."""
    from edgekd.errors import ConfigError
    from edgekd.recipe import Recipe

    with pytest.raises(ConfigError, match=f"distill.{field} needs the teacher, and distill.scheme '{scheme}'"):
        Recipe.from_dict({"distill": {"scheme": scheme, field: value}})
    Recipe.from_dict({"distill": {"scheme": "born-again", field: value}})  # born-again has a teacher


def test_soft_kl_is_zero_for_equal_logits():
    z = torch.tensor([[0.3, -1.0, 2.0]])
    assert schemes.soft_kl(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert F.kl_div is not None


def test_born_again_resume_restores_finished_generations(separable, tmp_path):
    def run(resume):
        torch.manual_seed(0)
        first = nn.Linear(2, 2)

        def make_student(k):
            torch.manual_seed(100 + k)
            return nn.Linear(2, 2)

        return born_again(first, _fixed_linear(+1.0), TrainData.of(**separable), cfg(epochs=2, generations=2),
                          RunOptions(progress=False, resume=resume), make_student=make_student, checkpoint_dir=tmp_path)

    done = run(resume=False)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["distill.gen1.ckpt", "distill.gen2.ckpt"]
    again = run(resume=True)  # both generations come back from their last checkpoint
    assert again.details["generations"] == [{**g, "train_seconds": again.details["generations"][i]["train_seconds"]}
                                            for i, g in enumerate(done.details["generations"])]
    assert torch.equal(again.student.weight, done.student.weight)
