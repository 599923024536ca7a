"""Tests for edgekd.distill: the Hinton KD loss by hand, and the frozen, cached teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from edgekd.distill.config import DistillConfig
from edgekd.distill.losses import kd_loss
from edgekd.distill.offline import distill, kd_step
from edgekd.train.plumbing import RunOptions, TrainData


def softmax(values, t=1.0):
    exps = [math.exp(v / t) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# -- kd_loss by hand ---------------------------------------------------------------------------


def test_kd_loss_one_sample_by_hand():
    s, t, y = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 1
    # T = 2: s/T = [0.5, 1, 0], t/T = [1, 0, 0.5]; both exp-sums are e^1 + e^0.5 + e^0 = 5.3670
    #   p_s = [1.6487, 2.7183, 1] / 5.3670 = [0.30720, 0.50648, 0.18632]
    #   p_t = [2.7183, 1, 1.6487] / 5.3670 = [0.50648, 0.18632, 0.30720]
    # KL(p_t || p_s) = sum p_t * (t - s) / T  (the log partition functions are equal and cancel)
    #   = 0.50648 * 0.5 + 0.18632 * (-1) + 0.30720 * 0.5 = 0.22051
    # CE = -log(e^2 / (e^1 + e^2 + e^0)) = -log(7.3891 / 11.1073) = 0.40761
    # loss = (1 - 0.5) * 0.40761 + 0.5 * 2^2 * 0.22051 = 0.20380 + 0.44103 = 0.64483
    p_s, p_t = softmax(s, 2.0), softmax(t, 2.0)
    ce = -math.log(softmax(s)[y])
    expected = 0.5 * ce + 0.5 * 4 * kl(p_t, p_s)
    assert expected == pytest.approx(0.64483, abs=1e-4)
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), temperature=2.0, alpha=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_two_samples_is_the_batch_mean_by_hand():
    s = [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
    t = [[2.0, 0.0, 1.0], [3.0, 0.0, 0.0]]
    y = [1, 0]
    # sample 1: CE 0.40761, KL 0.22051 (see the test above)
    # sample 2: p_s = [1/3, 1/3, 1/3]; t/T = [1.5, 0, 0] -> p_t = [4.4817, 1, 1] / 6.4817 = [0.69144, 0.15428, 0.15428]
    #   KL = 0.69144 * log(0.69144 * 3) + 2 * 0.15428 * log(0.15428 * 3) = 0.50448 - 0.23769 = 0.26679
    #   CE = -log(1/3) = 1.09861
    # batch means: CE (0.40761 + 1.09861) / 2 = 0.75311, KL (0.22051 + 0.26679) / 2 = 0.24365
    # loss = 0.5 * 0.75311 + 0.5 * 4 * 0.24365 = 0.37655 + 0.48730 = 0.86386
    ces = [-math.log(softmax(si)[yi]) for si, yi in zip(s, y)]
    kls = [kl(softmax(ti, 2.0), softmax(si, 2.0)) for si, ti in zip(s, t)]
    expected = 0.5 * sum(ces) / 2 + 0.5 * 4 * sum(kls) / 2
    assert expected == pytest.approx(0.86386, abs=1e-4)
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=2.0, alpha=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_alpha_zero_is_plain_cross_entropy():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    t = torch.tensor([[9.0, -9.0, 0.0], [0.0, 5.0, 0.0]])  # the teacher must not matter
    y = torch.tensor([1, 2])
    # CE by hand: sample 1 0.40761; sample 2 -log(e^3 / (e^0.5 + e^-1 + e^3)) = 0.08263; mean 0.24512
    by_hand = (-math.log(softmax([1.0, 2.0, 0.0])[1]) - math.log(softmax([0.5, -1.0, 3.0])[2])) / 2
    got = kd_loss(s, t, y, temperature=4.0, alpha=0.0)
    assert got.item() == pytest.approx(by_hand, rel=1e-5)
    assert got.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_identical_logits_give_zero_kl(temperature):
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.3, 0.3, -2.0]])
    y = torch.tensor([0, 2])
    only_kl = kd_loss(logits, logits.clone(), y, temperature=temperature, alpha=1.0)
    assert abs(only_kl.item()) < 1e-6
    # with alpha 0.5 only the CE half remains
    half = kd_loss(logits, logits.clone(), y, temperature=temperature, alpha=0.5)
    assert half.item() == pytest.approx(0.5 * F.cross_entropy(logits, y).item(), rel=1e-5)


def test_kl_term_is_scaled_by_t_squared():
    s, t, y = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([1])
    for temperature in (1.0, 2.0, 3.0):
        expected = temperature**2 * kl(softmax([2.0, 0.0, 1.0], temperature), softmax([1.0, 2.0, 0.0], temperature))
        got = kd_loss(s, t, y, temperature=temperature, alpha=1.0)
        assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_gradient_flows_to_student_only():
    s = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    t = torch.tensor([[2.0, 0.0, 1.0]], requires_grad=True)
    kd_loss(s, t.detach(), torch.tensor([1]), temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # softmax gradients sum to zero over classes
    assert abs(s.grad.sum().item()) < 1e-6


# -- distill() -----------------------------------------------------------------------------------


@pytest.fixture
def kd_data(tiny_images):
    g = torch.Generator().manual_seed(1)
    return {
        "train_x": tiny_images(24, seed=0),
        "train_y": torch.randint(0, 3, (24,), generator=g),
        "val_x": tiny_images(8, seed=1),
        "val_y": torch.randint(0, 3, (8,), generator=g),
    }


def watch(teacher):
    """Record each teacher forward: batch size, train mode and grad mode."""
    calls = []

    def hook(module, inputs, _output):
        calls.append({"n": len(inputs[0]), "training": module.training, "grad": torch.is_grad_enabled()})

    teacher.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("augment", [False, True])
def test_distill_leaves_the_teacher_untouched(make_tiny_cnn, kd_data, augment):
    teacher, student = make_tiny_cnn(seed=0).train(), make_tiny_cnn(seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}  # params and BN buffers
    cfg = DistillConfig(epochs=2, batch_size=8, lr=0.01, augment=augment)
    result = distill(student, teacher, TrainData.of(**kd_data), cfg, RunOptions(progress=False))
    assert len(result.epochs) == 2
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    for p in teacher.parameters():  # frozen while it taught, given back as it came (train mode, trainable)
        assert p.requires_grad is True and p.grad is None
    assert teacher.training is True
    # while the student was trained: every one of its parameters received a gradient
    assert all(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("teachers", [1, 2])
def test_decoupled_kd_trains_the_student_from_one_or_several_teachers(make_tiny_cnn, kd_data, teachers):
    teacher = [make_tiny_cnn(seed=k) for k in range(teachers)]
    student = make_tiny_cnn(seed=5)
    before = [p.clone() for p in student.parameters()]
    cfg = DistillConfig(epochs=1, batch_size=8, lr=0.01, augment=True, response="dkd", temperature=4.0, alpha=0.5)
    result = distill(student, teacher if teachers > 1 else teacher[0], TrainData.of(**kd_data), cfg,
                     RunOptions(progress=False))
    assert math.isfinite(result.epochs[0]["loss"]) and result.epochs[0]["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_teacher_logits_are_cached_without_augmentation(make_tiny_cnn, kd_data):
    teacher, student = make_tiny_cnn(seed=0), make_tiny_cnn(seed=1)
    calls = watch(teacher)
    cfg = DistillConfig(epochs=3, batch_size=8, lr=0.01, augment=False)
    distill(student, teacher, TrainData.of(**kd_data), cfg, RunOptions(progress=False))
    # one predict() over the 24 training images (predict batches by 1024), none per step
    assert calls == [{"n": 24, "training": False, "grad": False}]


def test_teacher_runs_per_step_with_augmentation(make_tiny_cnn, kd_data):
    teacher, student = make_tiny_cnn(seed=0), make_tiny_cnn(seed=1)
    calls = watch(teacher)
    cfg = DistillConfig(epochs=3, batch_size=8, lr=0.01, augment=True)
    distill(student, teacher, TrainData.of(**kd_data), cfg, RunOptions(progress=False))
    # augmented images differ every step: 24 / 8 = 3 steps per epoch * 3 epochs = 9 calls of 8 images,
    # all in eval mode and without autograd
    assert calls == [{"n": 8, "training": False, "grad": False}] * 9


def test_kd_step_uses_cached_logits_by_index(make_tiny_cnn, tiny_images):
    student = make_tiny_cnn(seed=1)

    def no_teacher(_images):
        raise AssertionError("the teacher must not run when logits are cached")

    cached = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [1.0, 1.0, 5.0], [3.0, 0.0, 0.0]])
    cfg = DistillConfig(temperature=2.0, alpha=0.7)
    step = kd_step(student, no_teacher, cfg, cached)
    images, labels, index = tiny_images(2, seed=4), torch.tensor([0, 2]), torch.tensor([3, 1])
    loss, logits = step(images, labels, index)
    assert logits.shape == (2, 3)
    expected = kd_loss(logits, cached[[3, 1]], labels, temperature=2.0, alpha=0.7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    wrong_rows = kd_loss(logits, cached[[0, 1]], labels, temperature=2.0, alpha=0.7)
    assert loss.item() != pytest.approx(wrong_rows.item(), rel=1e-6)


# -- knowledge kinds: feature and relation terms, several teachers --------------------------------

FITNET = {"kind": "fitnet", "student": "features.4", "teacher": "features.4"}  # 16 -> 32 channels: a regressor
AT = {"kind": "at", "student": ["features.2", "features.4"], "teacher": ["features.2", "features.4"]}


def no_hooks_left(model):
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("augment", [False, True])
def test_feature_terms_and_two_teachers_leave_the_teachers_untouched(make_tiny_cnn, kd_data, augment):
    teachers = [make_tiny_cnn(seed=0, width=8).train(), make_tiny_cnn(seed=2).train()]
    student = make_tiny_cnn(seed=1)
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    student_keys = set(student.state_dict())
    terms = [FITNET, AT, {"kind": "rkd"}, {"kind": "sp", "student": "features.4", "teacher": "features.4"}]
    cfg = DistillConfig(epochs=2, batch_size=8, lr=0.01, augment=augment, terms=terms)
    result = distill(student, teachers, TrainData.of(**kd_data), cfg, RunOptions(progress=False))
    assert len(result.epochs) == 2 and all(math.isfinite(e["loss"]) for e in result.epochs)
    for teacher, saved in zip(teachers, before):
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, saved[key]), key
        assert teacher.training is True  # given back as they came: train mode, trainable, never given a gradient
        assert all(p.requires_grad is True and p.grad is None for p in teacher.parameters())
        assert no_hooks_left(teacher)
    assert all(p.grad is not None for p in student.parameters())
    # the regressor trained alongside, but the student is only the student, without hooks
    assert set(student.state_dict()) == student_keys and no_hooks_left(student)


def test_regressors_are_trained_and_checkpointed_but_not_exported(make_tiny_cnn, kd_data, tmp_path):
    import onnx

    from edgekd.io.artifacts import load_checkpoint
    from edgekd.onnx_export import ExportConfig, to_onnx

    teacher, student = make_tiny_cnn(seed=0, width=8), make_tiny_cnn(seed=1)
    cfg = DistillConfig(epochs=1, batch_size=8, lr=0.01, augment=False, alpha=0.0, terms=[FITNET])
    distill(student, teacher, TrainData.of(**kd_data), cfg,
            RunOptions(progress=False, checkpoint=tmp_path / "distill.ckpt"))
    saved = load_checkpoint(tmp_path / "distill.ckpt")["model"]
    # fit() trained student + regressor: a 1x1 conv from 16 to 32 channels, saved with the student
    assert saved["regressors.0.weight"].shape == (32, 16, 1, 1)
    assert {k[len("student."):] for k in saved if k.startswith("student.")} == set(student.state_dict())
    # the regressor moved from its seeded initialization: it was in the optimizer
    torch.manual_seed(0)
    initial = torch.nn.Conv2d(16, 32, 1).weight
    assert not torch.allclose(saved["regressors.0.weight"], initial)
    path = to_onnx(student.eval(), tmp_path / "student.onnx", input_shape=(1, 8, 8), metadata={},
                   cfg=ExportConfig(check_batch_sizes=[2]), check_inputs=kd_data["val_x"]).path
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 3  # TinyCNN's three convolutions; no regressor


def test_feature_targets_are_cached_without_augmentation(make_tiny_cnn, kd_data):
    teacher, student = make_tiny_cnn(seed=0), make_tiny_cnn(seed=1)
    calls = watch(teacher)
    cfg = DistillConfig(epochs=3, batch_size=8, lr=0.01, augment=False, terms=[AT])
    cache = {}
    distill(student, teacher, TrainData.of(**kd_data), cfg, RunOptions(progress=False), teacher_cache=cache)
    # one probe image (to size the cache), then one pass over the 24 training images; none per step
    assert calls == [{"n": 1, "training": False, "grad": False}, {"n": 24, "training": False, "grad": False}]
    # only the attention maps are kept for AT: (24, H, W) per layer, not the feature maps
    assert cache[("at", "features.2", 2.0)].shape == (24, 4, 4) and cache[("logits", 0)].shape == (24, 3)
    calls.clear()
    distill(make_tiny_cnn(seed=3), teacher, TrainData.of(**kd_data), cfg, RunOptions(progress=False),
            teacher_cache=cache)
    assert calls == [{"n": 1, "training": False, "grad": False}]  # reused: only the sizing probe ran


def test_feature_terms_run_the_teacher_per_step_with_augmentation(make_tiny_cnn, kd_data):
    teacher, student = make_tiny_cnn(seed=0), make_tiny_cnn(seed=1)
    calls = watch(teacher)
    cfg = DistillConfig(epochs=3, batch_size=8, lr=0.01, augment=True, terms=[AT])
    distill(student, teacher, TrainData.of(**kd_data), cfg, RunOptions(progress=False))
    assert calls == [{"n": 8, "training": False, "grad": False}] * 9


def test_alpha_zero_without_terms_never_runs_the_teacher(make_tiny_cnn, kd_data):
    teacher, student = make_tiny_cnn(seed=0), make_tiny_cnn(seed=1)
    calls = watch(teacher)
    distill(student, teacher, TrainData.of(**kd_data), DistillConfig(epochs=1, batch_size=8, alpha=0.0),
            RunOptions(progress=False))
    assert calls == []


def test_knowledge_step_adds_the_weighted_terms(make_tiny_cnn, kd_data):
    """The loss of one step is soft-target KD plus weight * term, computed here by hand."""
    from edgekd.distill.losses import at_loss, kd_loss
    from edgekd.distill.offline import TeacherTargets, knowledge_step
    from edgekd.distill.terms import Capture, Term

    teacher, student = make_tiny_cnn(seed=0).eval(), make_tiny_cnn(seed=1).eval()
    terms = [Term.from_config({"kind": "at", "student": ["features.4"], "teacher": ["features.2"],
                               "weight": 10.0, "p": 2.0})]
    s_cap, t_cap = Capture(student, ["features.4"]), Capture(teacher, ["features.2"])
    cfg = DistillConfig(temperature=2.0, alpha=0.7)
    step = knowledge_step(student, [teacher], terms, cfg, TeacherTargets([teacher], terms, t_cap, 2.0), s_cap)
    images, labels = kd_data["train_x"][:4], kd_data["train_y"][:4]
    loss, logits = step(images, labels, torch.arange(4))
    with torch.no_grad():
        t_logits, t_feat = teacher(images), teacher.features[:3](images)
    s_feat = student.features(images)
    expected = kd_loss(logits, t_logits, labels, temperature=2.0, alpha=0.7) + 10.0 * at_loss(s_feat, t_feat)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
