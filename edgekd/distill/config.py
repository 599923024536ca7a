"""The `distill` section of a recipe: DistillConfig (Hinton KD settings, feature and
relation terms, extra teachers, the scheme), checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekd.configtools import (
    build_config,
    check_flag,
    check_float32,
    check_names,
    check_number,
    clip,
    require,
    require_list,
    shown,
)
from edgekd.distill.responses import RESPONSES
from edgekd.distill.scheme_registry import SCHEMES, spoken_list, teacher_schemes
from edgekd.distill.terms import LAYER_KEYS, TERMS
from edgekd.errors import ConfigError, first_line
from edgekd.search.config import SearchConfig
from edgekd.train.config import TeacherConfig, TrainConfig, check_arch_fields

MAX_TEMPERATURE = 100.0  # softmax(z / T) is uniform long before this
MAX_TERM_VALUE = 1e6  # a term's weights and settings (at's default weight is 1000)
MAX_TERMS = 64
MAX_EXTRA_TEACHERS = 16
MAX_PEERS = 32
MAX_GENERATIONS = 100
MAX_MIXUP = 100.0  # Beta(a, a) is nearly always 0.5 long before this


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Hinton KD into the student: loss = (1-alpha)*CE + alpha*T^2*KL(teacher_T || student_T).
    Defaults: the default run's TinyCNN-24, 15 epochs at lr 0.01 on the plain images (its
    teacher logits are then computed once)."""

    arch: str = "tinycnn"
    arch_args: dict = field(default_factory=lambda: {"width": 24})
    epochs: int = 15
    lr: float = 0.01
    augment: bool = False
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the KD (response) term; CE on labels gets 1 - alpha
    # the response term, a name in edgekd.distill.responses.RESPONSES: hinton (KL of the softened
    # outputs), dkd (decoupled KD, Zhao et al. 2022: target-class and non-target-class parts, the
    # latter weighted by dkd_beta), or any registered there
    response: str = "hinton"
    dkd_beta: float = 8.0
    # what else is transferred, added with weights: feature- and relation-based terms, e.g.
    # [{kind: fitnet, student: features.4, teacher: layers.2, weight: 1.0}]; kinds, their keys
    # and defaults: edgekd.distill.terms.TERMS (fitnet, at, sp, rkd, and any registered there)
    terms: list = field(default_factory=list)
    # multi-teacher KD: more teachers, each a `teacher:` section (trained in the teacher stage,
    # or loaded from `weights`); the student matches the average of all teachers' softened outputs
    extra_teachers: list = field(default_factory=list)
    # how teacher and student train, a name in edgekd.distill.scheme_registry.SCHEMES: offline,
    # online (mutual learning of `peers` students), born-again (`generations`), ema (teacher = EMA
    # of the student), or any registered there
    scheme: str = "offline"
    peers: int = 2
    generations: int = 2
    ema_decay: float = 0.999
    # what the teacher sees (edgekd.distill.offline): auto (its outputs computed once on the plain
    # images when neither augment nor mixup is on, else on every batch), per_batch (the very batch
    # the student sees, augmented or mixed: consistent teaching, Beyer et al. 2022) or cached (once
    # on the plain images, also under augmentation: Beyer et al.'s "fixed teacher", for comparison)
    teacher_outputs: str = "auto"
    # function matching (Beyer et al. 2022): each batch mixed with a shuffled copy of itself,
    # lambda ~ Beta(mixup, mixup), teacher and student on the same mixed images; 0: off
    mixup: float = 0.0
    # also train the student alone (cross-entropy only, same initialization, schedule, data and
    # optimizer steps) and report distillation's gain (edgekd.distill.baseline)
    baseline: bool = False
    # arch: auto: the student is chosen by its measured int8 latency on the target (edgekd.search)
    search: SearchConfig = field(default_factory=SearchConfig)
    _stage = "distill"

    def __post_init__(self):
        super().__post_init__()
        check_arch_fields(self)
        check_number(self.temperature, "distill.temperature", high=MAX_TEMPERATURE)
        require(self.temperature > 0, "distill.temperature must be positive")
        check_number(self.alpha, "distill.alpha")
        require(0.0 <= self.alpha <= 1.0, "distill.alpha must be between 0 and 1")
        require(isinstance(self.response, str) and self.response in RESPONSES,
                f"unknown distill.response {shown(self.response)}; available: {', '.join(RESPONSES.names())}")
        check_number(self.dkd_beta, "distill.dkd_beta", high=MAX_DKD_BETA)
        require(self.dkd_beta >= 0, f"distill.dkd_beta must be >= 0, got {self.dkd_beta}")
        terms = require_list(self.terms, "terms")
        require(len(terms) <= MAX_TERMS, f"distill.terms has {len(terms)} entries; at most {MAX_TERMS}")
        object.__setattr__(self, "terms", [_distill_term(t, i) for i, t in enumerate(terms)])
        extra = require_list(self.extra_teachers, "extra_teachers")
        require(len(extra) <= MAX_EXTRA_TEACHERS,
                f"distill.extra_teachers has {len(extra)} entries; at most {MAX_EXTRA_TEACHERS}")
        extra_teacher_configs(self)  # validates each entry
        require(isinstance(self.scheme, str) and self.scheme in SCHEMES,
               f"unknown distill.scheme {shown(self.scheme)}; available: {', '.join(SCHEMES.names())}")
        check_number(self.peers, "distill.peers", high=MAX_PEERS, integer=True)
        require(self.peers >= 2, f"distill.peers must be >= 2 (mutual learning needs a cohort), got {self.peers}")
        check_number(self.generations, "distill.generations", high=MAX_GENERATIONS, integer=True)
        require(self.generations >= 1, f"distill.generations must be >= 1, got {self.generations}")
        check_number(self.ema_decay, "distill.ema_decay")
        require(0.0 < self.ema_decay < 1.0, f"distill.ema_decay must be between 0 and 1, got {self.ema_decay}")
        require(self.teacher_outputs in TEACHER_OUTPUTS, f"unknown distill.teacher_outputs "
                f"{shown(self.teacher_outputs)}; available: {', '.join(TEACHER_OUTPUTS)}")
        check_number(self.mixup, "distill.mixup", high=MAX_MIXUP)
        require(self.mixup >= 0, f"distill.mixup must be >= 0 (0: off), got {self.mixup}")
        require(not (self.mixup > 0 and self.teacher_outputs == "cached"),
                "distill.mixup mixes every batch anew, so the teacher must see each mixed batch: set "
                "distill.teacher_outputs to auto or per_batch")
        require(not (self.mixup > 0 and self.alpha == 0 and not self.terms),
                "distill.mixup matches the teacher on mixed images, and with alpha 0 and no terms nothing is "
                "learnt from the teacher; raise distill.alpha or set distill.mixup: 0")
        check_flag(self.baseline, "distill.baseline")
        self.search.check_for(self)
        teacher_keys = {"terms": self.terms, "extra_teachers": self.extra_teachers, "mixup": self.mixup,
                        "teacher_outputs": self.teacher_outputs != "auto", "response": self.response != "hinton"}
        without_teacher = not SCHEMES.get(self.scheme).learns_from_teacher
        for key, used in teacher_keys.items():  # such a scheme has no teacher to read them from
            require(not (used and without_teacher),
                   f"distill.{key} needs the teacher, and distill.scheme '{self.scheme}' trains without one; "
                   f"remove distill.{key} or use scheme {spoken_list(teacher_schemes(), 'or')}")

    def caches_teacher(self) -> bool:
        """Whether the teacher's outputs are computed once on the plain images (see teacher_outputs)."""
        if self.teacher_outputs == "auto":
            return not self.augment and self.mixup == 0
        return self.teacher_outputs == "cached"


MAX_DKD_BETA = 1000.0
TEACHER_OUTPUTS = ("auto", "per_batch", "cached")


def _distill_term(raw, index: int) -> dict:
    """One distill.terms entry, checked against its kind in TERMS, with the kind's defaults
    filled in and layers as lists (None: unset, the classifier's input where the kind allows it)."""
    where = f"distill.terms[{index}]"
    require(isinstance(raw, dict) and "kind" in raw, f"{where} must be a mapping with a 'kind'")
    kind = raw["kind"]
    require(isinstance(kind, str) and kind in TERMS,
            f"unknown {where}.kind {shown(kind)}; available: {', '.join(TERMS.names())}")
    term_class = TERMS.get(kind)
    known = term_class.recipe_keys()
    unknown = [k for k in raw if k != "kind" and k not in known]
    require(not unknown, f"unknown key '{where}.{shown(unknown[0]).strip(chr(39)) if unknown else ''}' "
                         f"for kind {kind}; known: {', '.join(known)}")
    term = {"kind": kind, **known, **{k: v for k, v in raw.items() if k != "kind"}}
    for key, default in known.items():
        if isinstance(default, float):  # the kind's numbers: weights and settings
            value = term[key]
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_TERM_VALUE,
                   f"{where}.{key} must be a number >= 0 (at most {MAX_TERM_VALUE:g}), got {shown(value)}")
            check_float32(value, f"{where}.{key}")
            term[key] = float(value)
    for side in LAYER_KEYS:
        value = term[side]
        if isinstance(value, str):
            value = [value]
        require(value is not None or term_class.penultimate,
               f"{where} ({kind}) needs '{side}': a layer name or a list of them")
        if value is not None:
            require(isinstance(value, list) and value, f"{where}.{side} must be a layer name or a non-empty list "
                    f"of layer names, got {shown(value)}")
            check_names(value, f"{where}.{side}", max_length=MAX_TERMS)
        term[side] = value
    require((term["student"] is None) == (term["teacher"] is None)
           and (term["student"] is None or len(term["student"]) == len(term["teacher"])),
           f"{where}: student and teacher must name as many layers each "
           f"({shown(term['student'])} vs {shown(term['teacher'])})")
    try:
        term_class.check(term, where)
    except ConfigError:
        raise
    except Exception as exc:  # a registered kind's own check that fails on an odd value
        raise ConfigError(clip(f"{where} ({kind}) is not valid: {first_line(exc)}")) from None
    return term


def extra_teacher_configs(cfg: DistillConfig) -> list:
    """distill.extra_teachers as TeacherConfigs (their keys are those of the teacher section)."""
    configs = []
    for i, raw in enumerate(require_list(cfg.extra_teachers, "extra_teachers")):
        where = f"distill.extra_teachers[{i}]"
        require(isinstance(raw, dict), f"{where} must be a mapping like the teacher section")
        require(raw.get("transfer") is None, f"{where}.transfer is not supported; give trained weights instead")
        try:
            teacher = build_config(TeacherConfig, raw, where + ".", "the recipe")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(" (in the recipe)", "").replace(" in the recipe", "")) from None
        require(teacher.weights is not None or teacher.epochs > 0,
               f"{where}: epochs is 0 and weights is not set: train it or give its weights")
        configs.append(teacher)
    return configs
