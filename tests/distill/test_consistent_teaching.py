"""What the teacher sees (distill.teacher_outputs, distill.mixup): with augmentation it runs on
exactly the student's augmented batch, under no_grad and in the training precision
(consistent teaching, Beyer et al. 2022); without, its outputs are computed once (the fast
path); `cached` keeps them under augmentation too; mixup feeds both the same mixed images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.distill.config import DistillConfig
from edgekd.distill.mixup import mixed_batch
from edgekd.distill.offline import distill
from edgekd.errors import ConfigError
from edgekd.train.compute import Compute, use
from edgekd.train.plumbing import RunOptions, TrainData


class Recorder(nn.Module):
    """A model that keeps what each training-time forward saw: the input, whether gradients
    were on and whether CPU autocast was. It records from a forward pre-hook: a model with hooks
    runs as itself, not as an inference copy with batch norms folded (edgekd.models.inference),
    so the record is this object's."""

    def __init__(self, model: nn.Module, always: bool = False):
        super().__init__()
        self.model, self.always, self.seen = model, always, []
        self.register_forward_pre_hook(self._record)

    @staticmethod
    def _record(self, args):
        if self.training or self.always:
            x = args[0]
            self.seen.append((x.detach().clone(), torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))

    def forward(self, x):
        return self.model(x)


def run(make_tiny_cnn, tiny_images, compute=None, **settings):
    x, val_x = tiny_images(32, seed=0), tiny_images(9, seed=1)
    student, teacher = Recorder(make_tiny_cnn(seed=1)), Recorder(make_tiny_cnn(seed=2), always=True)
    cfg = DistillConfig(arch="tinycnn", arch_args={"width": 4}, epochs=1, batch_size=16, **settings)
    with use(compute or Compute()):
        distill(student, teacher, TrainData.of(x, torch.arange(32) % 3, val_x, torch.arange(9) % 3), cfg,
                RunOptions(progress=False))
    return x, student.seen, teacher.seen


@pytest.mark.parametrize("settings", [{"augment": True}, {"augment": True, "mixup": 0.4}])
def test_the_teacher_sees_the_student_s_very_batch_without_grad_in_the_training_precision(
        make_tiny_cnn, tiny_images, settings):
    x, student_seen, teacher_seen = run(make_tiny_cnn, tiny_images, Compute(precision="bf16"), **settings)
    assert len(student_seen) == len(teacher_seen) == 2  # one teacher forward per step, no cache
    for (s_in, s_grad, s_autocast), (t_in, t_grad, t_autocast) in zip(student_seen, teacher_seen):
        assert torch.equal(s_in, t_in)
        assert s_grad and not t_grad and s_autocast and t_autocast
    plain = {tuple(image.flatten().tolist()) for image in x}
    changed = [tuple(image.flatten().tolist()) not in plain for batch, _, _ in student_seen for image in batch]
    assert sum(changed) > len(changed) // 2  # augmented (or mixed): mostly not the stored images


def test_without_augmentation_the_teacher_runs_once_on_the_plain_images(make_tiny_cnn, tiny_images):
    x, student_seen, teacher_seen = run(make_tiny_cnn, tiny_images, augment=False)
    assert len(student_seen) == 2 and len(teacher_seen) == 1 and torch.equal(teacher_seen[0][0], x)


def test_cached_keeps_the_plain_images_outputs_under_augmentation(make_tiny_cnn, tiny_images):
    x, _, teacher_seen = run(make_tiny_cnn, tiny_images, augment=True, teacher_outputs="cached")
    assert len(teacher_seen) == 1 and torch.equal(teacher_seen[0][0], x)


def test_per_batch_runs_the_teacher_at_every_step_without_augmentation(make_tiny_cnn, tiny_images):
    _, student_seen, teacher_seen = run(make_tiny_cnn, tiny_images, augment=False, teacher_outputs="per_batch")
    assert len(teacher_seen) == 2
    assert all(torch.equal(s[0], t[0]) for s, t in zip(student_seen, teacher_seen))


def test_mixed_batch_and_its_label_loss_by_hand():
    torch.manual_seed(0)
    images, labels = torch.arange(4.0).view(4, 1, 1, 1), torch.tensor([0, 1, 2, -1])
    mixed, mix = mixed_batch(images, labels, 0.5)
    order = [labels.tolist().index(v) for v in mix.other.tolist()]
    expected = mix.share * images + (1 - mix.share) * images[order]
    assert torch.allclose(mixed, expected) and 0.0 < mix.share < 1.0
    losses = {0: 1.0, 1: 2.0, 2: 3.0, -1: 10.0}
    loss = mix.loss(lambda y: torch.tensor(sum(losses[v] for v in y.tolist())))
    assert float(loss) == pytest.approx(mix.share * 16.0 + (1 - mix.share) * 16.0)
    same, plain = mixed_batch(images, labels, 0.0)
    assert same is images and plain.other is None and plain.share == 1.0


@pytest.mark.parametrize("settings, message", [
    ({"mixup": 0.2, "teacher_outputs": "cached"}, "teacher_outputs to auto or per_batch"),
    ({"mixup": 0.2, "alpha": 0.0}, "nothing is learnt from the teacher"),
    ({"mixup": 0.2, "scheme": "online"}, "distill.mixup needs the teacher"),
    ({"teacher_outputs": "per_batch", "scheme": "ema"}, "distill.teacher_outputs needs the teacher"),
    ({"teacher_outputs": "sometimes"}, "unknown distill.teacher_outputs"),
    ({"mixup": -0.1}, "distill.mixup must be >= 0"),
    ({"mixup": 1000.0}, "distill.mixup must be at most"),
])
def test_teaching_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**settings)
