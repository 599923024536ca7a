"""A teacher that learns from the unlabeled images too: FixMatch (Sohn et al. 2020).

With labels scarce (data.labels_per_class, data.unlabeled), a teacher trained on the labeled
images alone knows no more than the student trained alone, and distillation can pass on only
what the unlabeled images add through its outputs. teacher.semi_supervised trains the teacher
on every train image instead. Each step:

- a batch of `labeled_batch` labeled images (crop + flip) with cross-entropy;
- the loop's batch of the whole train split (crop + flip: the weak view): a moving average of
  the teacher, in eval mode and without gradient, predicts it; where its top probability
  reaches `threshold` that class becomes the image's label, learnt on a strongly augmented
  view of the same image (another shift and flip, a square cut out, contrast changed). A
  labeled image of that batch keeps its own label.

The moving average (edgekd.distill.schemes.StudentWithEma) gives steadier labels than the
teacher of the moment, which would confirm its own mistakes; at the end the better of the
two on val is the teacher. Random draws come from a generator seeded by the batch's sample
positions, so a resumed run draws the same as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgekd.data.unlabeled import UNLABELED
from edgekd.train.config import SemiSupervisedConfig
from edgekd.train.plumbing import RunOptions, TrainData

STRONG_SHIFT = 2  # pixels, on top of the weak view's crop
HOLE_FRACTION = 0.4  # the cut-out square's side, of the image's shorter side
CONTRAST = 0.4  # contrast scaled by a factor in [1 - CONTRAST, 1 + CONTRAST]


def strong_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Another random shift and flip, a square cut out (set to the data's mean, 0 once
    normalized) and contrast scaled around it, per image, on x's device."""
    from edgekd.train.augment import augment_batch

    x = augment_batch(x, generator, pad=STRONG_SHIFT)
    n, _c, h, w = x.shape
    side = max(1, round(HOLE_FRACTION * min(h, w)))
    top = torch.randint(-(side // 2), h - side // 2, (n, 1, 1), generator=generator).to(x.device)
    left = torch.randint(-(side // 2), w - side // 2, (n, 1, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    factor = 1 + CONTRAST * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    return x.masked_fill(hole.unsqueeze(1), 0.0) * factor.to(x.device, x.dtype)


class Stats:
    """How many unlabeled images of the loop's batches got a pseudo-label, for the record (the
    steps this process ran: a resumed training counts from where it resumed)."""

    def __init__(self):
        self.unlabeled, self.confident = 0, 0  # 0-dimensional tensors on the device once counting

    def add(self, unlabeled: torch.Tensor, confident: torch.Tensor) -> None:
        """Count a batch's masks where they are: no device sync per step (read once, by fraction)."""
        self.unlabeled = self.unlabeled + unlabeled.sum()
        self.confident = self.confident + (unlabeled & confident).sum()

    def fraction(self) -> float | None:
        unlabeled = int(self.unlabeled)
        return round(int(self.confident) / unlabeled, 4) if unlabeled else None


def fixmatch_step(pair, labeled_x: torch.Tensor, labeled_y: torch.Tensor, cfg: SemiSupervisedConfig,
                  seed: int, stats: Stats):
    """The step function of fit (edgekd.train.loop) for `pair` (StudentWithEma: the teacher
    being trained and its moving average), with the labeled images and labels as CPU tensors."""
    from edgekd.train.augment import augment_batch
    from edgekd.train.compute import current
    from edgekd.train.labels import labeled_cross_entropy

    compute = current()
    generator = torch.Generator()

    def step(images, labels, index):
        # seeded by the batch (itself drawn from fit's checkpointed generator): resume draws alike
        generator.manual_seed(seed * 1_000_003 + int(index[0]) * 1_009 + int(index[-1]))
        pair.before_step(cfg.ema_decay)
        picks = torch.randint(len(labeled_y), (cfg.labeled_batch,), generator=generator)
        labeled_images = compute.batch(augment_batch(labeled_x[picks], generator))
        pair.ema.eval()
        with torch.no_grad():
            confidence, pseudo = pair.ema(images).float().softmax(1).max(1)
        known, confident = labels != UNLABELED, confidence >= cfg.threshold
        pseudo = torch.where(known, labels, pseudo)
        keep = (known | confident).float()
        stats.add(~known, confident)
        strong = strong_augment(images, generator)
        logits = pair.student(compute.batch(torch.cat([labeled_images.to(strong.dtype), strong])))
        labeled_logits, unlabeled_logits = logits[: cfg.labeled_batch], logits[cfg.labeled_batch:]
        supervised = labeled_cross_entropy(labeled_logits.float(), labeled_y[picks].to(labels.device))
        consistency = (F.cross_entropy(unlabeled_logits.float(), pseudo, reduction="none") * keep).mean()
        return supervised + cfg.unlabeled_weight * consistency, unlabeled_logits

    return step


def check_data(train_x, train_y, desc: str):
    """The train split as semi-supervised training needs it: in memory (a tensor, not a
    stream) with at least 2 labeled images; returns the labeled part. Preflight calls it on
    the same tensors before the run directory exists."""
    from edgekd.errors import ConfigError
    from edgekd.train.labels import labeled_part

    if not isinstance(train_x, torch.Tensor):
        raise ConfigError(f"{desc}.semi_supervised needs the train split in memory, and this data is streamed; "
                          "set data.streaming: false (or drop semi_supervised)")
    labeled_x, labeled_y = labeled_part(train_x, train_y)
    if len(labeled_y) < 2:
        raise ConfigError(f"{desc}.semi_supervised needs at least 2 labeled train images, the data has "
                          f"{len(labeled_y)}")
    return labeled_x, labeled_y


def train_semi_supervised(model: nn.Module, data: TrainData, cfg, run: RunOptions) -> tuple[nn.Module, object, dict]:
    """Train `model` (a TeacherConfig `cfg` with semi_supervised set) on the whole train split
    (`run` as in train.fit); returns the better of it and its moving average on val, fit's
    result and the record."""
    from edgekd.distill.schemes import StudentWithEma
    from edgekd.train.evaluate import accuracy
    from edgekd.train.loop import fit

    labeled_x, labeled_y = check_data(data.train_x, data.train_y, run.desc)
    pair, stats = StudentWithEma(model), Stats()
    step = fixmatch_step(pair, labeled_x, labeled_y, cfg.semi_supervised, run.seed, stats)
    result = fit(pair, step, data, cfg, run)
    model_top1, ema_top1 = accuracy(pair.student, data.val), accuracy(pair.ema, data.val)
    chosen = "ema" if ema_top1 > model_top1 else "model"
    winner = pair.ema if chosen == "ema" else pair.student
    winner.requires_grad_(True)
    record = {"method": "fixmatch", **{k: getattr(cfg.semi_supervised, k) for k in
                                       ("threshold", "labeled_batch", "unlabeled_weight", "ema_decay")},
              "model_val_top1": round(model_top1, 3), "ema_val_top1": round(ema_top1, 3), "continues": chosen,
              "pseudo_labeled_fraction": stats.fraction()}
    return winner, result, record
