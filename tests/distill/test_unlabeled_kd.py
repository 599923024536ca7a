"""Unlabeled images (label -1) reach the KD term and never the cross-entropy term, in every
loss that takes labels: Hinton KD, its soft-target form (multi-teacher, terms) and mutual
learning's; and a student distils from a train split that is mostly unlabeled."""

from __future__ import annotations

import pytest
import torch

from edgekd.distill.losses import kd_loss, soft_kl, soft_target_loss
from edgekd.distill.schemes import mutual_losses
from edgekd.train.plumbing import RunOptions, TrainData

LABELS = torch.tensor([0, -1, 2, -1])  # images 1 and 3 have no label


def gradient(loss_of, logits):
    logits = logits.clone().requires_grad_(True)
    loss_of(logits).backward()
    return logits.grad


@pytest.mark.parametrize("loss", ["kd", "soft_target"])
def test_unlabeled_rows_get_the_kd_gradient_only(loss):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)

    def loss_of(alpha):
        if loss == "kd":
            return lambda s: kd_loss(s, teacher, LABELS, temperature=2.0, alpha=alpha)
        probs = torch.softmax(teacher / 2.0, dim=1)
        return lambda s: soft_target_loss(s, probs, LABELS, temperature=2.0, alpha=alpha)

    ce_only, kd_only, both = (gradient(loss_of(alpha), student) for alpha in (0.0, 1.0, 0.25))
    unlabeled, labeled = [1, 3], [0, 2]
    assert torch.equal(ce_only[unlabeled], torch.zeros(2, 3))  # no cross-entropy reaches them
    assert (ce_only[labeled].abs().sum(1) > 0).all()
    assert (kd_only[unlabeled].abs().sum(1) > 0).all()  # the teacher's outputs do
    torch.testing.assert_close(both[unlabeled], 0.25 * kd_only[unlabeled])
    torch.testing.assert_close(both[labeled], 0.75 * ce_only[labeled] + 0.25 * kd_only[labeled])


def test_mutual_learning_skips_the_unlabeled_images_cross_entropy():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ce_only = gradient(lambda z: mutual_losses([z, b], LABELS, temperature=1.0, alpha=0.0)[0], a)
    assert torch.equal(ce_only[[1, 3]], torch.zeros(2, 3))
    kl_only = gradient(lambda z: mutual_losses([z, b], LABELS, temperature=1.0, alpha=1.0)[0], a)
    torch.testing.assert_close(kl_only, gradient(lambda z: soft_kl(b, z, 1.0), a))


def test_a_student_distils_from_a_mostly_unlabeled_train_split(make_tiny_cnn, tiny_images):
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.offline import distill

    x, val_x = tiny_images(48, seed=0), tiny_images(12, seed=1)
    y = torch.full((48,), -1)
    y[:6] = torch.arange(6) % 3  # 6 labels among 48 images
    cfg = DistillConfig(arch="tinycnn", arch_args={"width": 4}, epochs=2, batch_size=16, alpha=0.5, augment=True)
    student = make_tiny_cnn(seed=1)
    result = distill(student, make_tiny_cnn(seed=2), TrainData.of(x, y, val_x, torch.arange(12) % 3), cfg,
                     RunOptions(progress=False))
    assert len(result.epochs) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in result.epochs)
    assert all(0.0 <= e["train_top1"] <= 100.0 for e in result.epochs)  # counted over the 6 labeled images
