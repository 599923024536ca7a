"""Distillation terms: the feature- and relation-based knowledge named in `distill.terms`.

TERMS maps each `kind` to a Term subclass that holds the kind's recipe keys with their
defaults and computes its weighted loss (the math is in edgekd.distill.losses); `Capture`
reads the layers the terms name with forward hooks. A user's own term, registered from
a module named in the recipe's `plugins:` (then `terms: [{kind: l2-embedding}]`):

    from edgekd.distill.terms import TERMS, Term

    @TERMS.register("l2-embedding")
    class L2Embedding(Term):
        keys = {"weight": 1.0}  # recipe keys and defaults, besides student and teacher
        penultimate = True  # student/teacher may be left null: the classifier's input

        def loss(self, feats, targets):  # lists of tensors, one per layer pair
            return self.weight * sum((s - t).pow(2).mean() for s, t in zip(feats, targets))

Importing this module does not import torch (recipes are checked without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

from edgekd.configtools import require
from edgekd.errors import ConfigError
from edgekd.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

PENULTIMATE = None  # a term's layer left unset: the input of the model's classifier (its last nn.Linear)
LAYER_KEYS = ("student", "teacher")


class Term:
    """One `distill.terms` entry; each kind is a subclass, registered in TERMS.

    Class attributes a kind sets:
      keys            its recipe keys (besides `kind`) with their defaults; `student` and
                      `teacher` (default None) are always keys. A key with a float default
                      must be a number >= 0 in the recipe; each key but the two layer keys
                      becomes an attribute of the term (self.weight, ...)
      penultimate     True: student/teacher may be null, meaning the classifier's input
      learns_modules  True: make_modules is called once, before training
    Instances: `student` / `teacher` are tuples of layer names (PENULTIMATE: the
    classifier's input), paired in order. `teacher_targets` maps the teacher's features to
    what the loss needs, per sample, so that it can be cached when inputs are not augmented.
    """

    keys: ClassVar[dict] = {"weight": 1.0}
    penultimate: ClassVar[bool] = False
    learns_modules: ClassVar[bool] = False

    def __init__(self, kind: str, student: Sequence = (PENULTIMATE,), teacher: Sequence = (PENULTIMATE,),
                 **params):
        keys = self.recipe_keys()
        unknown = [k for k in params if k not in keys or k in LAYER_KEYS]
        if unknown:
            raise ConfigError(f"unknown key '{unknown[0]}' for distill term kind {kind}; known: {', '.join(keys)}")
        self.kind = kind
        self.student, self.teacher = tuple(student), tuple(teacher)
        for key, default in keys.items():
            if key not in LAYER_KEYS:
                value = params.get(key, default)
                setattr(self, key, float(value) if isinstance(default, float) else value)

    @classmethod
    def recipe_keys(cls) -> dict:
        """The kind's recipe keys with their defaults, student and teacher first."""
        return {**dict.fromkeys(LAYER_KEYS), **cls.keys}

    @staticmethod
    def from_config(raw: dict) -> "Term":
        """The term of one `distill.terms` entry (as DistillConfig validated it), by its kind."""
        cls = TERMS.get(raw["kind"])

        def layers(value):
            if value is None:
                return (PENULTIMATE,)
            return (value,) if isinstance(value, str) else tuple(value)

        params = {k: v for k, v in raw.items() if k != "kind" and k not in LAYER_KEYS}
        return cls(raw["kind"], layers(raw.get("student")), layers(raw.get("teacher")), **params)

    @classmethod
    def check(cls, entry: dict, where: str) -> None:
        """Checks of a kind's own, on an entry with its defaults filled in and layers as
        lists (None: unset); `where` names it in messages (distill.terms[i])."""
        require(entry.get("weight", 1.0) > 0, f"{where}: weight must be positive")

    def teacher_targets(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the loss needs from the teacher's features, per sample (default: the features)."""
        return list(feats)

    def target_key(self, layer: str | None) -> tuple:
        """What identifies the cached targets of the teacher's `layer` besides the teacher
        and images (the cache may be shared between runs): (kind, layer, a setting or None)."""
        return (self.kind, layer, None)

    def make_modules(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> list[nn.Module]:
        """Trainable modules of the term (trained with the student, not part of it), made
        from a probe's features when `learns_modules` is set; under a seeded RNG."""
        return []

    def loss(self, feats: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """The weighted loss from the student's features and the teacher targets, one per layer pair."""
        raise NotImplementedError(f"distill term kind '{self.kind}' has no loss")


TERMS: Registry[type[Term]] = Registry("distillation term")


@TERMS.register("fitnet")
class FitNet(Term):
    """FitNets hints: MSE between the (regressed) student feature and the teacher's; a
    regressor (1x1 conv or linear) per layer pair whose channels differ."""

    keys = {"weight": 1.0}
    learns_modules = True

    def __init__(self, kind: str, student: Sequence = (PENULTIMATE,), teacher: Sequence = (PENULTIMATE,),
                 **params):
        super().__init__(kind, student, teacher, **params)
        self.regressors: list = []  # one per layer pair (None: channels agree)

    def make_modules(self, student_feats, teacher_feats):
        from edgekd.distill.losses import make_regressor

        self.regressors = [make_regressor(s.shape[1], t.shape[1], s.ndim) for s, t in zip(student_feats, teacher_feats)]
        return [r for r in self.regressors if r is not None]

    def loss(self, feats, targets):
        from edgekd.distill.losses import fitnet_loss

        pairs = zip(feats, targets, self.regressors or [None] * len(feats))
        return self.weight * sum(fitnet_loss(s, t, r) for s, t, r in pairs)


@TERMS.register("at")
class AttentionTransfer(Term):
    """Attention transfer (Zagoruyko & Komodakis 2017): only the teacher's attention maps
    (mean over channels of |A|^p) are kept as targets."""

    keys = {"weight": 1000.0, "p": 2.0}

    @classmethod
    def check(cls, entry, where):
        require(entry["weight"] > 0 and entry["p"] > 0, f"{where}: weight and p must be positive")

    def teacher_targets(self, feats):
        from edgekd.distill.losses import attention_energy

        return [attention_energy(f, self.p) for f in feats]

    def target_key(self, layer):
        return (self.kind, layer, self.p)

    def loss(self, feats, targets):
        from edgekd.distill.losses import attention_energy, attention_loss_from_energy

        return self.weight * sum(attention_loss_from_energy(attention_energy(s, self.p), t)
                                 for s, t in zip(feats, targets))


@TERMS.register("sp")
class SimilarityPreserving(Term):
    """Similarity-preserving KD (Tung & Mori 2019) on the flattened features."""

    keys = {"weight": 3000.0}

    def teacher_targets(self, feats):
        return [f.flatten(1) for f in feats]

    def loss(self, feats, targets):
        from edgekd.distill.losses import sp_loss

        return self.weight * sum(sp_loss(s, t) for s, t in zip(feats, targets))


@TERMS.register("rkd")
class RelationalKD(Term):
    """RKD distance and angle terms (Park et al. 2019), weighted by `distance` and `angle`;
    one layer per side, by default the penultimate features."""

    keys = {"distance": 25.0, "angle": 50.0}
    penultimate = True

    @classmethod
    def check(cls, entry, where):
        require(entry["distance"] + entry["angle"] > 0, f"{where}: distance and angle are both 0")
        require(entry["student"] is None or len(entry["student"]) == 1,
                f"{where}: rkd takes one layer per side (the embedding)")

    def teacher_targets(self, feats):
        return [f.flatten(1) for f in feats]

    def loss(self, feats, targets):
        from edgekd.distill.losses import rkd_loss

        return sum(rkd_loss(s, t, distance=self.distance, angle=self.angle) for s, t in zip(feats, targets))


# -- reading layers -------------------------------------------------------------------------------


def classifier_name(model: nn.Module) -> str:
    """Name of the model's last nn.Linear: its input is the penultimate feature."""
    from torch import nn

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier; name the layers of the term")
    return names[-1]


def check_layer(model: nn.Module, name: str | None, *, what: str) -> None:
    """ConfigError naming `name` and a few valid names when the model has no such module."""
    if name is PENULTIMATE:
        classifier_name(model)
        return
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return
    valid = [n for n in modules if n]
    shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
    raise ConfigError(f"{what}: layer '{name}' not found in {type(model).__name__}; valid names: {shown}")


class Capture:
    """Forward hooks that keep the latest output of named modules (or, for PENULTIMATE,
    the input of the classifier). The output is cloned so that a following in-place
    operation (ReLU(inplace=True)) cannot change it."""

    def __init__(self, model: nn.Module, names: Sequence[str | None]):
        self.names = list(dict.fromkeys(names))  # unique, in order
        self.values: dict = {}
        self.handles = []
        modules = dict(model.named_modules())
        for name in self.names:
            check_layer(model, name, what="distill.terms")
            if name is PENULTIMATE:
                module = modules[classifier_name(model)]
                self.handles.append(module.register_forward_pre_hook(self._keep_input(name)))
            else:
                self.handles.append(modules[name].register_forward_hook(self._keep_output(name)))

    def _keep_output(self, name):
        import torch

        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"distill.terms: layer '{name}' does not output a single tensor")
            self.values[name] = output.clone()

        return hook

    def _keep_input(self, name):
        def hook(_module, inputs):
            self.values[name] = inputs[0].clone()

        return hook

    def take(self, names: Sequence[str | None]) -> list[torch.Tensor]:
        return [self.values[n] for n in names]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.values.clear()
