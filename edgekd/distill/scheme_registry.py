"""SCHEMES, the registry of distillation schemes (`distill.scheme`): how teacher and student
train. The built-in ones (their training is in edgekd.distill.offline and .schemes):

    offline     a frozen, trained teacher (or several) teaches the student
    online      deep mutual learning: `peers` students learn together, no teacher
    born-again  self-distillation over `generations`, the first from the teacher
    ema         self-distillation from an exponential moving average of the student

An entry is a Scheme subclass: `learns_from_teacher` says whether it reads the teacher
stage's teachers (False: the recipe's teacher-only keys, such as distill.terms, are refused
with it), and `train(run)` trains from a SchemeRun and returns an
edgekd.distill.schemes.SchemeResult (the student that continues down the chain, the fit
history that produced it, and details for the stage's record). A user's own, registered from
a module named in the recipe's `plugins:` (then `scheme: twice`):

    import dataclasses

    from edgekd.distill.offline import distill
    from edgekd.distill.scheme_registry import SCHEMES, Scheme
    from edgekd.distill.schemes import SchemeResult

    @SCHEMES.register("twice")
    class Twice(Scheme):
        '''offline KD, then KD again from the teachers with half the temperature'''
        def train(self, run):
            student = run.new_student()
            options = run.options().with_(checkpoint=None)  # two runs: no per-epoch checkpoint
            distill(student, run.teachers, run.data, run.cfg, options)
            cooler = dataclasses.replace(run.cfg, temperature=run.cfg.temperature / 2)
            result = distill(student, run.teachers, run.data, cooler, options)
            return SchemeResult(student=student, fit=result, details={"scheme": "twice"})

Importing this module does not import torch (recipes are checked without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from edgekd.registry import Registry


@dataclass(frozen=True)
class SchemeRun:
    """What a scheme trains with.

    cfg          the recipe's distill section (a DistillConfig)
    data         the train and val splits (edgekd.train.plumbing.TrainData; labels -1: unlabeled images)
    teachers     the teacher stage's teacher, then the extra teachers ([] when the scheme does
                 not learn_from_teacher)
    new_student  new_student(seed=None): a freshly built distill.arch; with a seed, its
                 initialization is drawn from that seed and the global RNG is left as it was
    ctx          the stage's Context: seed, progress, resume, log, path(name) in the run directory
    checkpoint   the stage's per-epoch checkpoint file (for train.fit's checkpoint and --resume)

    options() is the stage's RunOptions (edgekd.train.plumbing) for train.fit and the wrappers
    around it: the run's seed, progress, resume and log, named "distill", with `checkpoint`.
    """

    cfg: Any
    data: Any
    teachers: list
    new_student: Callable[..., Any]
    ctx: Any
    checkpoint: Path

    def options(self):
        return self.ctx.run_options("distill", self.checkpoint)


class Scheme:
    """One `distill.scheme`; each scheme is a subclass, registered in SCHEMES."""

    learns_from_teacher: ClassVar[bool] = True

    def train(self, run: SchemeRun):
        raise NotImplementedError(f"{type(self).__name__} must implement train(run)")


SCHEMES: Registry[type[Scheme]] = Registry("distillation scheme")


@SCHEMES.register("offline")
class Offline(Scheme):
    """A frozen, trained teacher (or several: multi-teacher KD) teaches the student."""

    def train(self, run: SchemeRun):
        from edgekd.distill.offline import distill
        from edgekd.distill.schemes import SchemeResult

        student = run.new_student()
        result = distill(student, run.teachers, run.data, run.cfg, run.options())
        details = {"teachers": len(run.teachers), "terms": [term["kind"] for term in run.cfg.terms]}
        return SchemeResult(student=student, fit=result, details=details)


@SCHEMES.register("online")
class Online(Scheme):
    """Deep mutual learning (Zhang et al. 2018): `peers` students learn together, no teacher."""

    learns_from_teacher = False

    def train(self, run: SchemeRun):
        from edgekd.distill.schemes import mutual_learning

        peers = [run.new_student() for _ in range(run.cfg.peers)]  # each its own initialization
        return mutual_learning(peers, run.data, run.cfg, run.options())


@SCHEMES.register("born-again")
class BornAgain(Scheme):
    """Self-distillation over `generations` (Furlanello et al. 2018), the first from the teacher."""

    def train(self, run: SchemeRun):
        from edgekd.distill.schemes import born_again

        def fresh_student(generation: int):
            # seeded per generation and outside the global RNG: a resumed run rebuilds the same one
            return run.new_student(seed=run.ctx.seed * 1000 + generation)

        return born_again(run.new_student(), run.teachers, run.data, run.cfg, run.options(), make_student=fresh_student,
                          checkpoint_dir=run.checkpoint.parent)  # beside the stage's


@SCHEMES.register("ema")
class Ema(Scheme):
    """Self-distillation from an exponential moving average of the student (`ema_decay`)."""

    learns_from_teacher = False

    def train(self, run: SchemeRun):
        from edgekd.distill.schemes import ema_self_distill

        return ema_self_distill(run.new_student(), run.data, run.cfg, run.options())


def teacher_schemes() -> tuple[str, ...]:
    """The registered schemes that learn from the teacher stage's teachers."""
    return tuple(name for name in SCHEMES if SCHEMES.get(name).learns_from_teacher)


def spoken_list(names, last: str = "and") -> str:
    """'a', 'a and b', 'a, b and c' (for messages)."""
    names = list(names)
    return f"{', '.join(names[:-1])} {last} {names[-1]}" if len(names) > 1 else "".join(names)
