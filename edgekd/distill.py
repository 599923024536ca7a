"""Knowledge distillation into the student.

Response-based KD (Hinton et al. 2015): the student matches the teacher's
temperature-softened class probabilities, weighted against cross-entropy on labels:

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

The T^2 factor keeps the soft-target gradients on the same scale as the hard ones when T
changes. The teacher is frozen and in eval mode; when the inputs are not augmented its
logits are computed once and reused for every epoch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .recipe import DistillConfig
from .train import FitResult, StepFn, fit, predict


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton KD loss, averaged over the batch."""
    soft_student = F.log_softmax(student_logits / temperature, dim=1)
    soft_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, labels)
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl


def kd_step(student: nn.Module, teacher: nn.Module, cfg: DistillConfig, cached_logits: torch.Tensor | None) -> StepFn:
    def step(images, labels, index):
        if cached_logits is not None:
            teacher_logits = cached_logits[index]
        else:
            with torch.no_grad():
                teacher_logits = teacher(images)
        logits = student(images)
        loss = kd_loss(logits, teacher_logits, labels, temperature=cfg.temperature, alpha=cfg.alpha)
        return loss, logits

    return step


def distill(
    student: nn.Module,
    teacher: nn.Module,
    *,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    cfg: DistillConfig,
    seed: int = 0,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
    log=None,
) -> FitResult:
    """Train `student` in place from the frozen `teacher`; returns the fit history.

    `checkpoint`, `resume` and `log` are passed to train.fit (a checkpoint per epoch, and
    continuing from it); the teacher is not in the checkpoint, it is the teacher stage's
    weights file.
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cached = None if cfg.augment else predict(teacher, train_x)
    step = kd_step(student, teacher, cfg, cached)
    return fit(
        student, step, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y,
        cfg=cfg, seed=seed, desc="distill", progress=progress, checkpoint=checkpoint, resume=resume, log=log,
    )
