"""How teacher and student train: the distillation schemes beyond offline KD.

    offline     a frozen, trained teacher teaches the student (edgekd.distill.offline.distill)
    online      deep mutual learning (Zhang et al. 2018): `peers` students learn together
    born-again  self-distillation over `generations` (Furlanello et al. 2018)
    ema         self-distillation from an exponential moving average of the student

Each scheme returns a SchemeResult: the student that continues down the chain, the
training history of the run that produced it, and what the scheme measured on the way
(each peer's, generation's or model's val top-1). All of them train through train.fit, so
the schedule, per-epoch checkpoints, resume and divergence checks are the same as for
offline distillation. `data` and `run` are train.fit's (edgekd.train.plumbing); every
scheme's training runs are named "distill". `cfg` is the recipe's distill section
(edgekd.distill.config.DistillConfig); this module does not import it, not even for type
checking: edgekd.distill.scheme_registry (imported by that config) calls into this one, and
tests/test_import_cycles.py counts every import.

SCHEMES (edgekd.distill.scheme_registry) names these schemes for the recipe and the stage.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgekd.distill.losses import soft_kl
from edgekd.train.evaluate import accuracy
from edgekd.train.labels import labeled_cross_entropy
from edgekd.train.loop import FitResult, fit
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData


@dataclass
class SchemeResult:
    student: nn.Module
    fit: FitResult
    details: dict = field(default_factory=dict)  # plain data for the stage report


def mutual_losses(peer_logits: list[torch.Tensor], labels: torch.Tensor, *, temperature: float,
                  alpha: float) -> list[torch.Tensor]:
    """Loss of each peer k in a cohort of K:

        L_k = (1 - alpha) * CE(z_k, y) + alpha * T^2 * mean_{j != k} KL(softmax(z_j / T) || softmax(z_k / T))

    with the other peers' logits z_j detached (they are targets). Summing the L_k and
    stepping once updates every peer by the gradient of its own loss only."""
    losses = []
    for k, logits in enumerate(peer_logits):
        others = [soft_kl(z, logits, temperature) for j, z in enumerate(peer_logits) if j != k]
        ce = labeled_cross_entropy(logits, labels)  # unlabeled images (-1): the peers' KL alone
        losses.append((1.0 - alpha) * ce + alpha * torch.stack(others).mean())
    return losses


class Cohort(nn.Module):
    """The peers as one module, so that train.fit trains, checkpoints and resumes them
    together with one optimizer. forward() (what fit evaluates on val to pick the best
    epoch) is the mean of the peers' logits: the epoch at which the cohort as a whole is
    best; the best single peer is chosen after training."""

    def __init__(self, peers: list[nn.Module]):
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x):
        return torch.stack([peer(x) for peer in self.peers]).mean(0)


def mutual_step(cohort: Cohort, cfg):
    def step(images, labels, _index):
        logits = [peer(images) for peer in cohort.peers]
        losses = mutual_losses(logits, labels, temperature=cfg.temperature, alpha=cfg.alpha)
        return torch.stack(losses).sum(), torch.stack(logits).detach().mean(0)

    return step


def mutual_learning(peers: list[nn.Module], data: TrainData, cfg,
                    run: RunOptions = DEFAULT_RUN) -> SchemeResult:
    """Train the peers together (no teacher); the best peer by val top-1 is the student."""
    cohort = Cohort(peers)
    result = fit(cohort, mutual_step(cohort, cfg), data, cfg, run.with_(desc="distill"))
    peer_top1 = [round(accuracy(peer, data.val), 3) for peer in cohort.peers]
    best = max(range(len(peer_top1)), key=lambda k: peer_top1[k])  # first of equals: deterministic
    details = {"scheme": "online", "peers_val_top1": peer_top1, "best_peer": best,
               "cohort_val_top1": round(result.best_val_top1, 3)}
    return SchemeResult(student=cohort.peers[best], fit=result, details=details)


def born_again(student: nn.Module, teacher, data: TrainData, cfg, run: RunOptions = DEFAULT_RUN, *,
               make_student, checkpoint_dir=None, teacher_cache: dict | None = None) -> SchemeResult:
    """Generation 1 is `student` distilled from `teacher` (a module, or a list for
    multi-teacher KD, with cfg.terms), or trained on labels alone when teacher is None;
    generation k+1 is `make_student(k + 1)`, a freshly initialized copy, distilled from
    generation k with Hinton KD only (cfg.terms name the teacher's layers, which a student
    generation does not have). The best generation by val top-1 is returned (the first of
    equals). `teacher_cache`: passed to distill() for generation 1 (the teacher's cached
    outputs, shared with other runs of the same teacher and train images). Generation k trains
    with seed run.seed + k - 1; run.checkpoint is not read.

    `checkpoint_dir`: each generation keeps its own per-epoch checkpoint there
    (distill.gen<k>.ckpt) until the stage is done, so a resumed run restores finished
    generations from their last checkpoint without training them again.
    """
    from edgekd.distill.offline import distill
    from edgekd.train.loop import cross_entropy_step

    generations, models, fits = [], [], []
    log = run.log
    current = student
    for k in range(1, cfg.generations + 1):
        if k > 1:
            current = make_student(k)
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"distill.gen{k}.ckpt"
        source = teacher if k == 1 else models[-1]
        if log is not None:
            log(f"[distill] born-again generation {k} of {cfg.generations}")
        generation = run.with_(seed=run.seed + k - 1, desc="distill", checkpoint=ckpt, name=f"distill.gen{k}")
        if source is None:
            fit_result = fit(current, cross_entropy_step(current), data, cfg, generation)
        else:
            fit_result = distill(current, source, data, cfg if k == 1 else _response_only(cfg), generation,
                                 teacher_cache=teacher_cache if k == 1 else None)
        top1 = round(accuracy(current, data.val), 3)
        generations.append({"generation": k, "val_top1": top1, "best_epoch": fit_result.best_epoch,
                            "train_seconds": round(fit_result.seconds, 3)})
        models.append(current)
        fits.append(fit_result)
        if log is not None:
            log(f"[distill] generation {k}: val top-1 {top1:.2f}%")
    best = max(range(len(models)), key=lambda i: generations[i]["val_top1"])
    details = {"scheme": "born-again", "generations": generations, "best_generation": best + 1,
               "teacher": "teacher stage" if teacher is not None else "none (generation 1 on labels)"}
    return SchemeResult(student=models[best], fit=fits[best], details=details)


def _response_only(cfg):
    return dataclasses.replace(cfg, terms=[]) if cfg.terms else cfg


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used for the update number `updates` (0-based): min(decay, (1 + n) / (10 + n)).

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates, and timm)
    lets the average follow the student closely at first, instead of staying near the
    random initial weights for ~1 / (1 - decay) steps."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter and floating-point
    buffer (batch-norm running statistics); integer buffers (num_batches_tracked) are copied."""
    # Not torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn: their decay is fixed (no
    # warm-up, ema_decay_at), the first update copies the student, lerp differs from this sum in
    # the last bits, and the wrapper's state_dict keys (module.*, n_averaged) would change the
    # checkpoint format, so a run checkpointed before could not resume.
    ema_state, model_state = ema.state_dict(), model.state_dict()
    for name, value in model_state.items():
        target = ema_state[name]
        if target.is_floating_point():
            target.mul_(decay).add_(value.detach(), alpha=1.0 - decay)
        else:
            target.copy_(value)


class StudentWithEma(nn.Module):
    """The student and its moving average as one module, so that fit checkpoints and
    resumes both (and the step count). The EMA's parameters do not require gradients, so
    fit's optimizer never sees them. forward() is the student."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.ema = copy.deepcopy(student)
        self.ema.requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps begun

    def forward(self, x):
        return self.student(x)

    def before_step(self, decay: float) -> None:
        """Called at the start of each training step: fold in the student as the previous
        optimizer step left it (nothing to fold in before the first step)."""
        if int(self.steps) > 0:
            ema_update(self.ema, self.student, ema_decay_at(decay, int(self.steps) - 1))
        self.steps += 1


def ema_step(pair: StudentWithEma, cfg):
    """Hinton KD from the EMA (in eval mode, no gradient) into the student.

    fit calls the step function, then steps the optimizer, so the EMA is updated at the
    start of the next step: after every optimizer step except the very last of training
    (whose weight in the average would be 1 - decay)."""
    from edgekd.distill.losses import kd_loss

    def step(images, labels, _index):
        pair.before_step(cfg.ema_decay)
        pair.ema.eval()
        with torch.no_grad():
            teacher_logits = pair.ema(images)
        logits = pair.student(images)
        return kd_loss(logits, teacher_logits, labels, temperature=cfg.temperature, alpha=cfg.alpha), logits

    return step


def ema_self_distill(student: nn.Module, data: TrainData, cfg,
                     run: RunOptions = DEFAULT_RUN) -> SchemeResult:
    """Train `student` with KD from its own EMA; the better of the two on val continues
    (the student on a tie)."""
    pair = StudentWithEma(student)
    result = fit(pair, ema_step(pair, cfg), data, cfg, run.with_(desc="distill"))
    student_top1 = round(accuracy(pair.student, data.val), 3)
    ema_top1 = round(accuracy(pair.ema, data.val), 3)
    chosen = "ema" if ema_top1 > student_top1 else "student"
    details = {"scheme": "ema", "ema_decay": cfg.ema_decay, "student_val_top1": student_top1,
               "ema_val_top1": ema_top1, "continues": chosen, "ema_updates": max(0, int(pair.steps) - 1)}
    winner = pair.ema if chosen == "ema" else pair.student
    winner.requires_grad_(True)  # later stages (pruning's fine-tuning) train it
    return SchemeResult(student=winner, fit=result, details=details)
