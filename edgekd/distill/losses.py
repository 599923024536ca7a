"""What knowledge the student learns: response-, feature- and relation-based losses.

Each loss is a plain function of tensors (tested against hand-computed values):

- response: Hinton KD (`kd_loss`), and its multi-teacher form, in which the teachers'
  temperature-softened *probabilities* are averaged (`averaged_soft_targets`) and the
  student matches that average (`soft_target_loss`); decoupled KD (`dkd_loss`, Zhao et al.
  2022), distill.response: dkd;
- feature: FitNets hints (`fitnet_loss`, with a learned 1x1 conv regressor on the student
  side when channel counts differ) and attention transfer (`at_loss`, Zagoruyko &
  Komodakis 2017);
- relation: RKD distance and angle terms (`rkd_distance_loss`, `rkd_angle_loss`, Park et
  al. 2019) and similarity-preserving KD (`sp_loss`, Tung & Mori 2019).

The recipe's `distill.terms` kinds (edgekd.distill.terms.TERMS) read features from named
layers (module paths as in model.named_modules(), such as `layers.1` or `features.4`) and
weight these losses.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from edgekd.errors import ConfigError
from edgekd.train.labels import labeled_cross_entropy


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton KD, averaged over the batch:
    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)).
    CE skips the unlabeled images (label -1), which learn from the KL term alone
    (edgekd.train.labels)."""
    ce = labeled_cross_entropy(student_logits, labels)
    return (1.0 - alpha) * ce + alpha * soft_kl(teacher_logits, student_logits, temperature)


def soft_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(target / T) || softmax(logits / T)), batch mean, times T^2 (which keeps the
    soft-target gradients on the scale of the hard ones as T changes).

    The target is detached: it is a teacher's (or, in mutual learning, another peer's) output,
    and only `logits` learn from this term."""
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(target_logits.detach() / temperature, dim=1)
    return temperature**2 * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def averaged_soft_targets(teacher_logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Multi-teacher soft targets: the mean of each teacher's softmax(logits / T) (probabilities
    are averaged, not logits, so each teacher's distribution counts once whatever its scale)."""
    return torch.stack([F.softmax(t / temperature, dim=1) for t in teacher_logits]).mean(0)


def soft_target_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, *,
                     temperature: float, alpha: float) -> torch.Tensor:
    """kd_loss against given soft-target probabilities (one teacher's, or an average)."""
    ce = labeled_cross_entropy(student_logits, labels)
    if alpha == 0.0:
        return ce
    soft_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(soft_student, teacher_probs, reduction="batchmean")
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl


def dkd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, *,
             temperature: float, alpha: float, beta: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022), against the teacher's softened probabilities (one
    teacher's or an average): (1 - alpha) * CE(student, y) + alpha * (TCKD + beta * NCKD), where
    TCKD is the KL of the binary (target class, all others) split of the probabilities and NCKD
    the KL among the non-target classes alone, both times T^2. Hinton KD is TCKD + (1 - p_t)·NCKD
    with p_t the teacher's target probability: a confident teacher thus mutes the non-target
    knowledge, which beta restores. The target class of an unlabeled image (-1) is the teacher's."""
    ce = labeled_cross_entropy(student_logits, labels)
    if alpha == 0.0:
        return ce
    teacher_probs = teacher_probs.detach().float()
    target = torch.where(labels >= 0, labels, teacher_probs.argmax(1))
    is_target = F.one_hot(target, student_logits.shape[1]).bool()
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    eps = torch.finfo(torch.float32).tiny
    # TCKD: the binary split (target, rest)
    t_target = teacher_probs.masked_fill(~is_target, 0).sum(1).clamp(eps, 1 - 1e-7)
    s_target = log_p.masked_fill(~is_target, 0).sum(1).exp().clamp(eps, 1 - 1e-7)
    tckd = (t_target * (t_target / s_target).log()
            + (1 - t_target) * ((1 - t_target) / (1 - s_target)).log()).mean()
    # NCKD: the distribution among the other classes, the target's share removed
    log_q_student = F.log_softmax((student_logits.float() / temperature).masked_fill(is_target, -1e4), dim=1)
    q_teacher = teacher_probs.masked_fill(is_target, 0)
    q_teacher = q_teacher / q_teacher.sum(1, keepdim=True).clamp_min(eps)
    nckd = F.kl_div(log_q_student.masked_fill(is_target, 0), q_teacher, reduction="batchmean")
    return (1.0 - alpha) * ce + alpha * temperature**2 * (tckd + beta * nckd)


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two (N, C, H, W) maps (or (N, H, W) attention maps) to the same H x W: the larger
    one is reduced by adaptive average pooling to the smaller size (never upsampled)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))

    def pool(x):
        if tuple(x.shape[-2:]) == size:
            return x
        if x.ndim == 3:
            return F.adaptive_avg_pool2d(x.unsqueeze(1), size).squeeze(1)
        return F.adaptive_avg_pool2d(x, size)

    return pool(a), pool(b)


def make_regressor(student_channels: int, teacher_channels: int, ndim: int = 4) -> nn.Module | None:
    """FitNets regressor from the student's channels to the teacher's: a 1x1 conv for
    (N, C, H, W) features, a linear map for (N, C) features; None when they already agree."""
    if student_channels == teacher_channels:
        return None
    if ndim == 4:
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    return nn.Linear(student_channels, teacher_channels)


def fitnet_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, regressor: nn.Module | None = None):
    """FitNets hint: MSE between the (regressed) student feature and the teacher's, averaged
    over every element, after matching spatial sizes (see match_spatial)."""
    if regressor is not None:
        student_feat = regressor(student_feat)
    if student_feat.ndim == 4:
        student_feat, teacher_feat = match_spatial(student_feat, teacher_feat)
    if student_feat.shape != teacher_feat.shape:
        raise ConfigError(f"fitnet: student feature {tuple(student_feat.shape[1:])} and teacher feature "
                          f"{tuple(teacher_feat.shape[1:])} differ after the regressor")
    return F.mse_loss(student_feat, teacher_feat)


def attention_energy(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """mean over channels of |A|^p: (N, C, H, W) -> (N, H, W), before normalization."""
    return feat.abs().pow(p).mean(1)


def attention_loss_from_energy(student_energy: torch.Tensor, teacher_energy: torch.Tensor) -> torch.Tensor:
    """(Q_s - Q_t)^2 averaged, with Q = the flattened, L2-normalized map (the authors' code)."""
    s, t = match_spatial(student_energy, teacher_energy)
    q_s = F.normalize(s.flatten(1), dim=1)
    q_t = F.normalize(t.flatten(1), dim=1)
    return (q_s - q_t).pow(2).mean()


def at_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017) for one layer pair."""
    return attention_loss_from_energy(attention_energy(student_feat, p), attention_energy(teacher_feat, p))


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows of e, with an exact 0 diagonal (as in the RKD code:
    clamped before the square root, so the gradient stays finite)."""
    square = e.pow(2).sum(1)
    d2 = (square.unsqueeze(1) + square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    d = d2.sqrt().clone()
    d[range(len(e)), range(len(e))] = 0
    return d


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance term: smooth L1 between the pairwise distances of the batch, each divided
    by the mean of its non-zero distances."""
    with torch.no_grad():
        t_d = pairwise_distances(teacher.flatten(1))
        t_d = t_d / t_d[t_d > 0].mean()
    s_d = pairwise_distances(student.flatten(1))
    s_d = s_d / s_d[s_d > 0].mean()
    return F.smooth_l1_loss(s_d, t_d)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every triplet: (N*N*N,)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[j, i] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle term: smooth L1 between the cosines of the angles of every triplet."""
    with torch.no_grad():
        t_angle = _angles(teacher.flatten(1))
    return F.smooth_l1_loss(_angles(student.flatten(1)), t_angle)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, *, distance: float = 25.0, angle: float = 50.0):
    """Park et al. 2019 with their default weights."""
    loss = student.new_zeros(())
    if distance:
        loss = loss + distance * rkd_distance_loss(student, teacher)
    if angle:
        loss = loss + angle * rkd_angle_loss(student, teacher)
    return loss


def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): ||G_s - G_t||_F^2 / b^2 with
    G = row-L2-normalized (A A^T) of the flattened features of the batch."""
    b = student_feat.shape[0]
    g_s = F.normalize(student_feat.flatten(1) @ student_feat.flatten(1).t(), dim=1)
    g_t = F.normalize(teacher_feat.flatten(1) @ teacher_feat.flatten(1).t(), dim=1)
    return (g_s - g_t).pow(2).sum() / (b * b)
