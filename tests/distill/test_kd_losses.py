"""Tests for edgekd.distill.losses and edgekd.distill.terms: every loss against values worked out by hand on small tensors,
the FitNets regressor, spatial matching, recipe terms and the feature hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgekd.distill.losses import (
    at_loss,
    attention_energy,
    averaged_soft_targets,
    fitnet_loss,
    kd_loss,
    make_regressor,
    match_spatial,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    soft_target_loss,
    sp_loss,
)
from edgekd.distill.terms import Capture, Term, check_layer
from edgekd.errors import ConfigError


def softmax(values, t=1.0):
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


# -- response-based ------------------------------------------------------------------------------


def test_kd_loss_is_still_importable_from_distill():
    from edgekd.distill import offline as distill

    assert distill.kd_loss is kd_loss


def test_multi_teacher_averages_softened_probabilities_by_hand():
    s, t1, t2 = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]
    # T = 2: p1 = softmax([1, 0, 0.5]) = [0.50648, 0.18632, 0.30720]; p2 = [1/3, 1/3, 1/3]
    #   average = [0.41991, 0.25983, 0.32026]   (probabilities averaged, not logits)
    # p_s = softmax([0.5, 1, 0]) = [0.30720, 0.50648, 0.18632]
    # KL(avg || p_s) = 0.41991 ln(0.41991/0.30720) + 0.25983 ln(0.25983/0.50648) + 0.32026 ln(0.32026/0.18632)
    #   = 0.13124 - 0.17342 + 0.17347 = 0.13129; alpha = 1: loss = T^2 * KL = 0.52517
    avg = torch.tensor([(a + b) / 2 for a, b in zip(softmax(t1, 2), softmax(t2, 2))])
    got_avg = averaged_soft_targets([torch.tensor([t1]), torch.tensor([t2])], 2.0)
    assert torch.allclose(got_avg[0], avg, atol=1e-6)
    assert got_avg[0].tolist() == pytest.approx([0.41991, 0.25983, 0.32026], abs=1e-5)
    kl = sum(a * math.log(a / b) for a, b in zip(avg.tolist(), softmax(s, 2)))
    got = soft_target_loss(torch.tensor([s]), got_avg, torch.tensor([1]), temperature=2.0, alpha=1.0)
    assert got.item() == pytest.approx(4 * kl, rel=1e-5)
    assert got.item() == pytest.approx(0.52517, abs=1e-4)


def test_one_teacher_soft_targets_equal_hinton_kd():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [3.0, 0.0, 0.0]])
    y = torch.tensor([1, 2])
    for alpha in (0.0, 0.5, 0.9):
        expected = kd_loss(s, t, y, temperature=3.0, alpha=alpha)
        probs = averaged_soft_targets([t], 3.0)
        assert soft_target_loss(s, probs, y, temperature=3.0, alpha=alpha).item() == pytest.approx(
            expected.item(), rel=1e-5)


# -- FitNets --------------------------------------------------------------------------------------


def test_fitnet_with_regressor_and_pooling_by_hand():
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # 1 channel, 2x2
    teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)  # 2 channels, 1x1
    regressor = make_regressor(1, 2)
    assert isinstance(regressor, nn.Conv2d) and regressor.kernel_size == (1, 1)
    with torch.no_grad():
        regressor.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        regressor.bias.copy_(torch.tensor([0.0, 0.5]))
    # regressed: channel 0 = [[1, 2], [3, 4]], channel 1 = -x + 0.5 = [[-0.5, -1.5], [-2.5, -3.5]]
    # the student map is larger: average-pooled to 1x1 -> [2.5, -2.0]
    # MSE against [1, 0] = ((2.5 - 1)^2 + (-2)^2) / 2 = (2.25 + 4) / 2 = 3.125
    assert fitnet_loss(student, teacher, regressor).item() == pytest.approx(3.125, rel=1e-6)


def test_fitnet_same_channels_needs_no_regressor_and_pools_the_teacher():
    assert make_regressor(8, 8) is None
    assert isinstance(make_regressor(4, 6, ndim=2), nn.Linear)
    student = torch.tensor([[[[1.0]]]])  # 1x1
    teacher = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # 2x2 -> pooled to its mean 4
    # MSE = (1 - 4)^2 = 9
    assert fitnet_loss(student, teacher).item() == pytest.approx(9.0)
    with pytest.raises(ConfigError, match="differ after the regressor"):
        fitnet_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


def test_match_spatial_pools_the_larger_map_only():
    a, b = torch.arange(16.0).view(1, 1, 4, 4), torch.zeros(1, 3, 2, 2)
    pa, pb = match_spatial(a, b)
    assert pb is b and pa.shape == (1, 1, 2, 2)
    # 2x2 blocks of [[0..3], [4..7], ...]: top-left block 0, 1, 4, 5 -> 2.5
    assert pa[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    pa, pb = match_spatial(torch.zeros(2, 4, 4), torch.ones(2, 4, 4))  # attention maps (N, H, W)
    assert pa.shape == pb.shape == (2, 4, 4)


# -- attention transfer ---------------------------------------------------------------------------


def test_attention_transfer_by_hand():
    student = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # 2 channels, 1x2
    teacher = torch.tensor([[[[2.0, -2.0]]]])  # 1 channel: |A|^2 ignores the sign
    # student: mean over channels of A^2 = [(1 + 9) / 2, (4 + 0) / 2] = [5, 2]; / sqrt(29) = [0.92848, 0.37139]
    # teacher: [4, 4] -> [0.70711, 0.70711]
    # mean of squared differences = (0.22137^2 + 0.33572^2) / 2 = (0.049005 + 0.112708) / 2 = 0.080856
    assert attention_energy(student)[0].tolist() == [[5.0, 2.0]]
    assert at_loss(student, teacher).item() == pytest.approx(0.080856, abs=1e-5)
    # the map is normalized: scaling a feature map does not change the loss
    assert at_loss(3 * student, teacher).item() == pytest.approx(0.080856, abs=1e-5)
    assert at_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


# -- relation-based -------------------------------------------------------------------------------

RIGHT_345 = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # sides 3, 4, 5
RIGHT_11 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # sides 1, 1, sqrt(2)


def test_pairwise_distances_have_a_zero_diagonal():
    d = pairwise_distances(RIGHT_345)
    assert torch.allclose(d, torch.tensor([[0.0, 3.0, 4.0], [3.0, 0.0, 5.0], [4.0, 5.0, 0.0]]))


def test_rkd_distance_by_hand():
    # student distances 3, 4, 5 / mean 4 = 0.75, 1, 1.25; teacher 1, 1, 1.41421 / mean 1.13807 = 0.87868, 0.87868,
    # 1.24264. Differences -0.12868, 0.12132, 0.00736, each twice in the 3x3 matrix (diagonal 0):
    # smooth L1 (|d| < 1: d^2 / 2) mean = 2 * (0.016559 + 0.014719 + 0.0000542) / 2 / 9 = 0.0034813
    assert rkd_distance_loss(RIGHT_345, RIGHT_11).item() == pytest.approx(0.0034813, abs=1e-6)
    # scale-invariant: distances are divided by their mean
    assert rkd_distance_loss(10 * RIGHT_345, RIGHT_11).item() == pytest.approx(0.0034813, abs=1e-6)


def test_rkd_angle_by_hand():
    # cosines at each vertex: student 0 (right angle), 0.6 = 9 / (3 * 5) at (3, 0), 0.8 = 16 / (4 * 5) at (0, 4);
    # teacher 0, 0.70711, 0.70711. Each appears twice in the 27 triplet cosines; the rest agree (1 on the
    # diagonals, 0 where a point meets itself). Mean smooth L1 = (0.10711^2 + 0.09289^2) / 27 = 0.00074452
    assert rkd_angle_loss(RIGHT_345, RIGHT_11).item() == pytest.approx(0.00074452, abs=1e-7)
    assert rkd_loss(RIGHT_345, RIGHT_11).item() == pytest.approx(25 * 0.0034813 + 50 * 0.00074452, abs=1e-4)
    assert rkd_loss(RIGHT_345, RIGHT_11, distance=0.0).item() == pytest.approx(50 * 0.00074452, abs=1e-5)


def test_rkd_gradient_reaches_the_student_only_and_is_finite():
    student = RIGHT_345.clone().requires_grad_(True)
    teacher = RIGHT_11.clone().requires_grad_(True)
    rkd_loss(student, teacher).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_similarity_preserving_by_hand():
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # other width: fine, only b x b matrices meet
    # G_s = [[1, 1], [1, 2]] -> rows normalized [0.70711, 0.70711], [0.44721, 0.89443]
    # G_t = [[1, 0], [0, 4]] -> [1, 0], [0, 1]
    # ||G_s - G_t||_F^2 = 0.085786 + 0.5 + 0.2 + 0.011146 = 0.796932; / b^2 = 4 -> 0.199233
    assert sp_loss(student, teacher).item() == pytest.approx(0.199233, abs=1e-5)
    # 4-D features are flattened per sample
    assert sp_loss(student.view(2, 2, 1, 1), teacher.view(2, 3, 1, 1)).item() == pytest.approx(0.199233, abs=1e-5)


# -- recipe terms and hooks -----------------------------------------------------------------------


def test_terms_are_weighted_and_combinable():
    s4, t4 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.randn(3, 2, 2, 2)
    at = Term.from_config({"kind": "at", "student": ["a"], "teacher": ["b"], "weight": 1000.0, "p": 2.0})
    expected = 1000 * at_loss(s4, t4)
    assert at.loss([s4], at.teacher_targets([t4])).item() == pytest.approx(expected.item(), rel=1e-5)
    sp = Term.from_config({"kind": "sp", "student": ["a", "c"], "teacher": ["b", "d"], "weight": 2.0})
    both = sp.loss([s4, s4], sp.teacher_targets([t4, t4]))
    assert both.item() == pytest.approx(2 * 2 * sp_loss(s4, t4).item(), rel=1e-5)  # summed over layer pairs
    rkd = Term.from_config({"kind": "rkd", "student": None, "teacher": None, "distance": 1.0, "angle": 0.0})
    assert rkd.student == (None,)
    assert rkd.loss([s4], rkd.teacher_targets([t4])).item() == pytest.approx(
        rkd_distance_loss(s4.flatten(1), t4.flatten(1)).item(), rel=1e-5)


def test_capture_reads_named_layers_and_the_classifier_input(make_tiny_cnn, tiny_images):
    model = make_tiny_cnn(seed=0).eval()
    capture = Capture(model, ["features.2", None])
    x = tiny_images(2)
    model(x)
    feature, embedding = capture.take(["features.2", None])
    assert feature.shape == (2, 8, 4, 4) and embedding.shape == (2, 16)
    # the embedding is what the classifier sees
    assert torch.allclose(model.fc(embedding), model(x), atol=1e-6)
    capture.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_unknown_layer_names_the_valid_ones(make_tiny_cnn):
    model = make_tiny_cnn()
    with pytest.raises(ConfigError, match=r"what: layer 'layer2' not found in TinyCNN; valid names: features, "
                                          r"features\.0, features\.0\.0"):
        check_layer(model, "layer2", what="what")
    check_layer(model, "features.4", what="what")  # exists: no error
    with pytest.raises(ConfigError, match="no nn.Linear classifier"):
        check_layer(nn.Sequential(nn.Conv2d(1, 2, 3)), None, what="rkd")


# -- decoupled KD (distill.response: dkd) -----------------------------------------------------------


def test_dkd_with_beta_one_minus_the_target_probability_is_hinton_kd():
    """Zhao et al.'s identity, per sample: KL = TCKD + (1 - p_target) * NCKD."""
    from edgekd.distill.losses import dkd_loss, soft_kl

    torch.manual_seed(0)
    student, teacher, label, t = torch.randn(1, 5), 2 * torch.randn(1, 5), torch.tensor([2]), 2.0
    probs = torch.softmax(teacher / t, dim=1)
    beta = float(1 - probs[0, 2])
    dkd = dkd_loss(student, probs, label, temperature=t, alpha=1.0, beta=beta)
    assert math.isclose(float(dkd), float(soft_kl(teacher, student, t)), rel_tol=1e-5)


def test_dkd_is_zero_when_the_student_matches_and_mixes_cross_entropy_by_alpha():
    from edgekd.distill.losses import dkd_loss

    torch.manual_seed(1)
    logits, labels, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), 4.0
    probs = torch.softmax(logits / t, dim=1)
    assert float(dkd_loss(logits, probs, labels, temperature=t, alpha=1.0, beta=8.0)) == pytest.approx(0, abs=1e-5)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    mixed = dkd_loss(logits, probs, labels, temperature=t, alpha=0.25, beta=8.0)
    assert float(mixed) == pytest.approx(0.75 * float(ce), abs=1e-5)


def test_dkd_takes_the_teachers_class_as_the_target_of_an_unlabeled_image():
    from edgekd.distill.losses import dkd_loss

    torch.manual_seed(2)
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    probs = torch.softmax(teacher / 2, dim=1)
    unlabeled = dkd_loss(student, probs, torch.full((3,), -1), temperature=2.0, alpha=1.0, beta=8.0)
    as_teacher = dkd_loss(student, probs, probs.argmax(1), temperature=2.0, alpha=1.0, beta=8.0)
    assert torch.allclose(unlabeled, as_teacher)


def test_recipe_checks_the_response_term():
    from edgekd.distill.config import DistillConfig

    assert DistillConfig(response="dkd", dkd_beta=4.0).dkd_beta == 4.0
    with pytest.raises(ConfigError, match="unknown distill.response 'dk'; available: hinton, dkd"):
        DistillConfig(response="dk")
    with pytest.raises(ConfigError, match="distill.dkd_beta must be >= 0"):
        DistillConfig(response="dkd", dkd_beta=-1)
    with pytest.raises(ConfigError, match="distill.response needs the teacher"):
        DistillConfig(response="dkd", scheme="online")
