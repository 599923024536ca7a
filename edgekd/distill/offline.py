"""Offline knowledge distillation into the student: the orchestrator.

The loss (edgekd.distill.losses, edgekd.distill.terms) is

    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(teachers_T || student_T) + sum_i w_i * term_i

where teachers_T is one teacher's temperature-softened probabilities, or the average of
several teachers' (multi-teacher), and the terms are feature- and relation-based knowledge
(FitNets, attention transfer, RKD, similarity-preserving, or a kind registered in TERMS)
read from named layers with forward hooks; feature terms always use the first teacher.

The teachers are frozen and in eval mode while they teach (`frozen`: then given back as they
were, for a teacher may train later: born-again's generation k teaches k + 1 and can be the
student that pruning or QAT fine-tunes), run under torch.no_grad, in the training
precision (the step runs inside the training loop's autocast; edgekd.train.compute).
distill.teacher_outputs says what they see. By default (auto), when the inputs are neither
augmented nor mixed, what the loss needs from them (soft targets, and the per-sample targets
of the terms) is computed once and reused every epoch, if it fits in TEACHER_CACHE_BYTES and the
memory budget (caches_logits; preflight checks it with the data's counts);
otherwise the teachers run at every step on exactly the batch the student sees (consistent
teaching, Beyer et al. 2022; with distill.mixup, on the mixed images: function matching,
edgekd.distill.mixup). `per_batch` always runs them per step; `cached` always computes them
once on the plain images (under augmentation, Beyer et al.'s "fixed teacher").

A term's own modules (FitNets regressors) are trained together with the student (an
optimizer over both) but are not part of it: the student's state_dict and its ONNX export
hold only the student.

`cfg` is the recipe's distill section (edgekd.distill.config.DistillConfig); this module does
not import it, not even for type checking: edgekd.distill.scheme_registry (imported by that
config) calls into this one, and tests/test_import_cycles.py counts every import.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from edgekd.distill.losses import averaged_soft_targets, kd_loss
from edgekd.distill.mixup import mixed_batch
from edgekd.distill.responses import RESPONSES
from edgekd.distill.terms import Capture, Term
from edgekd.errors import ConfigError
from edgekd.io.membudget import check_memory, memory_budget, over_budget
from edgekd.models.inference import frozen, inference_copy
from edgekd.train.compute import current
from edgekd.train.evaluate import predict
from edgekd.train.loop import FitResult, StepFn, cross_entropy_step, fit
from edgekd.train.plumbing import DEFAULT_RUN, RunOptions, TrainData

__all__ = ["distill", "kd_loss", "kd_step", "knowledge_step", "TEACHER_CACHE_BYTES"]


TEACHER_CACHE_BYTES = 1 << 30  # beyond this, teacher targets are computed at every step instead of cached


def logits_device(model: nn.Module) -> torch.device:
    """Where a model computes (its first parameter's device; the CPU for a parameterless one)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _frozen_runner(teacher: nn.Module) -> nn.Module:
    """What runs a frozen teacher at every step: its inference copy (the same function, faster),
    where the run computes; the teacher itself, not moved, where there is no copy to make."""
    runner = inference_copy(teacher)
    return teacher if runner is teacher else current().model(runner)


def kd_step(student: nn.Module, teacher: nn.Module, cfg, cached_logits: torch.Tensor | None) -> StepFn:
    """The response loss from one teacher (the default recipe's path: Hinton KD): cached logits,
    or the teacher run on the very batch the student sees (mixed first with distill.mixup)."""
    response = RESPONSES.get(cfg.response)
    from_logits = getattr(response, "from_logits", None)
    if cached_logits is None:  # run at every step
        teacher = _frozen_runner(teacher)

    def step(images, labels, index):
        images, mix = mixed_batch(images, labels, cfg.mixup)
        if cached_logits is not None:
            teacher_logits = cached_logits[index].to(logits_device(student))
        else:
            with torch.no_grad():  # within fit's autocast: the training precision
                teacher_logits = teacher(images)
        logits = student(images)
        if from_logits is not None:
            loss = mix.loss(lambda y: from_logits(logits, teacher_logits, y, cfg))
        else:
            probs = F.softmax(teacher_logits.float() / cfg.temperature, dim=1)
            loss = mix.loss(lambda y: response(logits, probs, y, cfg))
        return loss, logits

    return step


def response_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
                  cfg) -> torch.Tensor:
    """The response term of distill.response (edgekd.distill.responses.RESPONSES) against the
    teachers' softened probabilities."""
    return RESPONSES.get(cfg.response)(logits, teacher_probs, labels, cfg)


class StudentWithRegressors(nn.Module):
    """What fit() trains when terms have modules of their own (FitNets regressors): the
    student plus those modules, so that one optimizer, one checkpoint and the best-epoch
    copy cover both. Its forward is the student's; the student itself is left without them."""

    def __init__(self, student: nn.Module, regressors: nn.ModuleList):
        super().__init__()
        self.student = student
        self.regressors = regressors

    def forward(self, x):
        return self.student(x)


class TeacherTargets:
    """The teachers' logits and the terms' per-sample teacher targets, cached or computed per step.

    The cache is a dict keyed by what an entry holds (("logits", i) for teacher i, or a
    term's target_key: its kind, teacher layer and a setting such as AT's p), so a caller
    may share it between distill() calls with the same teachers and training images (the
    benchmark's seeds and kinds do).
    """

    def __init__(self, teachers, terms, capture, temperature):
        self.teachers, self.terms, self.capture, self.temperature = teachers, terms, capture, temperature
        self.keys = [("logits", i) for i in range(len(teachers))] + [
            term.target_key(layer) for term in terms for layer in term.teacher]
        self.cache = None

    @torch.no_grad()
    def compute(self, images) -> list[torch.Tensor]:
        """One tensor per key, in the order of self.keys."""
        logits = [t(images) for t in self.teachers]
        return logits + [target for term in self.terms
                         for target in term.teacher_targets(self.capture.take(term.teacher))]

    def fill_cache(self, store: dict, train_x: torch.Tensor, batch_size: int = 512) -> None:
        if not all(key in store for key in self.keys):
            parts = [self.compute(train_x[i : i + batch_size]) for i in range(0, len(train_x), batch_size)]
            for j, key in enumerate(self.keys):
                store[key] = torch.cat([part[j] for part in parts])
        self.cache = [store[key] for key in self.keys]

    def __call__(self, images, index):
        values = self.compute(images) if self.cache is None else [v[index].to(images.device) for v in self.cache]
        probs = averaged_soft_targets(values[: len(self.teachers)], self.temperature)
        rest, targets = values[len(self.teachers) :], []
        for term in self.terms:
            targets.append(rest[: len(term.teacher)])
            rest = rest[len(term.teacher) :]
        return probs, targets


def knowledge_step(student: nn.Module, teachers: Sequence[nn.Module], terms: list[Term], cfg,
                   teacher_targets, student_capture: Capture) -> StepFn:
    """KD (from one teacher or the average of several) plus the weighted feature/relation terms."""

    def step(images, labels, index):
        images, mix = mixed_batch(images, labels, cfg.mixup)
        probs, targets = teacher_targets(images, index)
        logits = student(images)
        loss = mix.loss(lambda y: response_loss(logits, probs, y, cfg))
        for term, term_targets in zip(terms, targets):
            loss = loss + term.loss(student_capture.take(term.student), term_targets)
        return loss, logits

    return step


def distill(student: nn.Module, teacher: nn.Module | Sequence[nn.Module], data: TrainData, cfg,
            run: RunOptions = DEFAULT_RUN, *, teacher_cache: dict | None = None) -> FitResult:
    """Train `student` in place from the frozen teacher(s); returns the fit history.

    `teacher`: one module, or a list (multi-teacher: their softened outputs are averaged;
    cfg.terms read features from the first). `run` goes to train.fit, named "distill" (a
    checkpoint per epoch, and continuing from it); the teachers are not in the checkpoint,
    they are the teacher stage's weights files. `teacher_cache`: a dict to keep the cached
    teacher outputs in and reuse them in later calls with the same teachers and train
    images (None: a fresh one).
    """
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    compute = current()
    with contextlib.ExitStack() as on_device:  # the teachers run where the student trains, then come back
        on_device.enter_context(frozen(teachers))
        for t in teachers:
            on_device.enter_context(compute.borrowed(t))
        return _distill(student, teachers, data, cfg, run.with_(desc="distill"), teacher_cache)


def _distill(student, teachers, data: TrainData, cfg, run: RunOptions, teacher_cache):
    terms = [Term.from_config(raw) for raw in cfg.terms]
    train_x, seed, log = data.train_x, run.seed, run.log
    store = {} if teacher_cache is None else teacher_cache
    if not terms and cfg.alpha == 0.0:  # nothing to learn from the teachers: plain cross-entropy
        return fit(student, cross_entropy_step(student), data, cfg, run)
    if not terms and len(teachers) == 1:
        caching = ("logits", 0) in store or (cfg.caches_teacher() and caches_logits(
            cfg, len(train_x), _outputs(student, train_x), log))
        if caching and ("logits", 0) not in store:
            store[("logits", 0)] = predict(teachers[0], train_x)
        cached = store[("logits", 0)] if caching else None
        return fit(student, kd_step(student, teachers[0], cfg, cached), data, cfg, run)

    student_capture = Capture(student, [n for term in terms for n in term.student])
    teacher_capture = Capture(teachers[0], [n for term in terms for n in term.teacher])
    try:
        model = _attach_term_modules(student, teachers[0], terms, train_x[:2], student_capture, teacher_capture, seed)
        if not terms:  # several frozen teachers, no hooks reading their layers: their inference copies
            teachers = [_frozen_runner(t) for t in teachers]
        targets = TeacherTargets(teachers, terms, teacher_capture, cfg.temperature)
        if cfg.caches_teacher():
            limit = min(TEACHER_CACHE_BYTES, memory_budget())
            if _cache_bytes(targets, train_x) <= limit:
                targets.fill_cache(store, train_x)
            elif cfg.teacher_outputs == "cached":
                raise ConfigError(f"distill.teacher_outputs cached: the teachers' outputs for the terms would take "
                                  f"more than {limit >> 20} MiB; use auto or per_batch")
        step = knowledge_step(student, teachers, terms, cfg, targets, student_capture)
        return fit(model, step, data, cfg, run)
    finally:  # the student leaves without hooks (they would run in export and later stages)
        student_capture.remove()
        teacher_capture.remove()


def logit_cache_bytes(images: int, outputs: int) -> int:
    """What caching `outputs` float32 teacher outputs per image takes: twice, while predict()
    joins its batches into one tensor."""
    return 2 * 4 * int(images) * int(outputs)


def caches_logits(cfg, images: int, outputs: int, log=None) -> bool:
    """Whether the teachers' outputs for `images` (`outputs` per image: the classes, times the
    teachers) are computed once and cached: cfg.caches_teacher(), and they fit the memory
    budget. Over it, `auto` runs the teacher at every step instead (the same targets: auto
    caches only un-augmented, unmixed images) and `cached` is a ConfigError (exit 2) naming
    the setting. Preflight calls it with the data's counts, before the teacher trains."""
    if not cfg.caches_teacher():
        return False
    need, what = logit_cache_bytes(images, outputs), f"the teacher-logit cache ({images:,} images x {outputs:,} outputs)"
    if cfg.teacher_outputs == "cached":
        check_memory(need, f"distill.teacher_outputs cached: {what}", "set distill.teacher_outputs: per_batch (the "
                     "teacher runs at every step) or auto", error=ConfigError)
        return True
    refused = over_budget(need, what, "the teacher runs at every step instead (distill.teacher_outputs: auto)")
    if refused is not None and log is not None:
        log(refused)
    return refused is None


def _outputs(student: nn.Module, train_x) -> int:
    """Logits per image, from the student on one image (as many as the teacher's; the teacher
    itself runs only for the cache)."""
    return int(predict(student, train_x[:1]).reshape(1, -1).shape[1]) if len(train_x) else 0


def _attach_term_modules(student, teacher, terms, probe, student_capture, teacher_capture, seed) -> nn.Module:
    """Let the terms that learn modules of their own (FitNets: a regressor for each layer
    pair whose channels differ) make them from a probe's features; returns what fit() trains."""
    learning = [term for term in terms if term.learns_modules]
    if not learning:
        return student
    was_training = student.training
    student.eval()  # a probe forward must not move batch-norm statistics
    with torch.no_grad():
        student(probe)
        teacher(probe)
    student.train(was_training)
    regressors = nn.ModuleList()
    # the modules draw from their own seeded RNG: the global RNG stays as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for term in learning:
            regressors.extend(term.make_modules(student_capture.take(term.student), teacher_capture.take(term.teacher)))
    return StudentWithRegressors(student, regressors) if len(regressors) else student


def _cache_bytes(targets: TeacherTargets, train_x: torch.Tensor) -> int:
    """Bytes the cache would take, from one probe sample."""
    return sum(t.numel() for t in targets.compute(train_x[:1])) * 4 * len(train_x)
