"""RESPONSES, the registry of response losses (`distill.response`): how the student matches
the teachers' softened outputs, cross-entropy on the labels included.

An entry is a function `loss(logits, teacher_probs, labels, cfg) -> scalar tensor`: the
student's logits, the teachers' temperature-softened probabilities (one teacher's, or the
average of several: edgekd.distill.losses.averaged_soft_targets), the labels (-1: an
unlabeled image, which learns from the teachers alone) and the distill section (a
DistillConfig: temperature, alpha, ...). Optionally it has `from_logits(logits,
teacher_logits, labels, cfg)`, the same loss from one teacher's raw logits (used when there
is one teacher and no terms); without it, those logits are softened first. A user's own,
registered from a module named in the recipe's `plugins:` (then `response: reverse-kl`):

    import torch.nn.functional as F
    from edgekd.distill.responses import RESPONSES
    from edgekd.train.labels import labeled_cross_entropy

    @RESPONSES.register("reverse-kl")
    def reverse_kl(logits, teacher_probs, labels, cfg):
        log_p = F.log_softmax(logits / cfg.temperature, dim=1)
        kl = (log_p.exp() * (log_p - teacher_probs.clamp_min(1e-12).log())).sum(1).mean()
        ce = labeled_cross_entropy(logits, labels)  # the labeled images only
        return (1 - cfg.alpha) * ce + cfg.alpha * cfg.temperature**2 * kl

Importing this module does not import torch (recipes are checked without it).
"""

from __future__ import annotations

from typing import Callable

from edgekd.registry import Registry

RESPONSES: Registry[Callable] = Registry("response loss")


@RESPONSES.register("hinton")
def hinton(logits, teacher_probs, labels, cfg):
    """Hinton KD: (1 - alpha) * CE + alpha * T^2 * KL(teachers_T || student_T)."""
    from edgekd.distill.losses import soft_target_loss

    return soft_target_loss(logits, teacher_probs, labels, temperature=cfg.temperature, alpha=cfg.alpha)


def hinton_from_logits(logits, teacher_logits, labels, cfg):
    """Hinton KD from one teacher's logits (the default run's loss)."""
    from edgekd.distill.losses import kd_loss

    return kd_loss(logits, teacher_logits, labels, temperature=cfg.temperature, alpha=cfg.alpha)


hinton.from_logits = hinton_from_logits


@RESPONSES.register("dkd")
def dkd(logits, teacher_probs, labels, cfg):
    """Decoupled KD (Zhao et al. 2022): target and non-target parts, the latter weighted by dkd_beta."""
    from edgekd.distill.losses import dkd_loss

    return dkd_loss(logits, teacher_probs, labels, temperature=cfg.temperature, alpha=cfg.alpha, beta=cfg.dkd_beta)
