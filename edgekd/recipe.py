"""A recipe is data: frozen dataclasses per stage, read from YAML with yaml.safe_load.

Unknown keys and wrong types are ConfigErrors that name the key and the file, CLI
``--set stage.key=value`` overrides any field, and the resolved recipe is written into
the run directory so the run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

DEFAULT_RECIPE = "default.yaml"  # inside edgekd/recipes/


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split.

    name: 'fashion-mnist-subset' (embedded), 'fashion-mnist', 'mnist', 'cifar10',
    'cifar100', 'imagefolder' or 'npz'; path: where to look (a folder or a file).
    """

    name: str = "fashion-mnist-subset"
    path: Optional[str] = None
    val_fraction: float = 0.1
    calib_size: int = 512
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None

    def __post_init__(self):
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction must be between 0 and 1")
        _check(self.calib_size > 0, "data.calib_size must be positive")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key} must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every stage that trains."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.003
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    augment: bool = True  # random crop (pad 2) + horizontal flip, done on whole batches

    def __post_init__(self):
        _check(self.epochs >= 0, f"{self._stage}.epochs must be >= 0, got {self.epochs}")
        _check(self.batch_size > 0, f"{self._stage}.batch_size must be positive")
        _check(self.lr > 0, f"{self._stage}.lr must be positive")
        _check(self.weight_decay >= 0, f"{self._stage}.weight_decay must be >= 0")
        _check(
            self.optimizer in OPTIMIZERS,
            f"unknown {self._stage}.optimizer '{self.optimizer}'; available: {', '.join(OPTIMIZERS)}",
        )

    _stage = "train"


OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TransferConfig:
    """Transfer learning for the teacher (edgekd.transfer): load `pretrained` except its
    classifier head, train a new head with the backbone frozen for `head_epochs` at
    teacher.lr, then fine-tune everything for teacher.epochs at `finetune_lr`
    (None: teacher.lr / 10)."""

    pretrained: str = ""
    head_epochs: int = 3
    finetune_lr: Optional[float] = None

    def __post_init__(self):
        _check(bool(self.pretrained), "teacher.transfer.pretrained must name a weights file")
        _check(self.head_epochs >= 0, f"teacher.transfer.head_epochs must be >= 0, got {self.head_epochs}")
        _check(self.finetune_lr is None or self.finetune_lr > 0, "teacher.transfer.finetune_lr must be positive")


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    """The teacher: trained here (epochs > 0) or loaded from weights (then epochs may be 0)."""

    arch: str = "resnet20"
    arch_args: dict = field(default_factory=dict)
    weights: Optional[str] = None
    transfer: Optional[TransferConfig] = None  # start from pretrained weights, new head (edgekd.transfer)
    _stage = "teacher"


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Hinton KD into the student: loss = (1-alpha)*CE + alpha*T^2*KL(teacher_T || student_T)."""

    arch: str = "tinycnn"
    arch_args: dict = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the KD (response) term; CE on labels gets 1 - alpha
    # what else is transferred (edgekd.kd_losses), added with weights: feature- and relation-based
    # terms, e.g. [{kind: fitnet, student: features.4, teacher: layers.2, weight: 1.0}]; see DISTILL_TERMS
    terms: list = field(default_factory=list)
    # multi-teacher KD: more teachers, each a `teacher:` section (trained in the teacher stage,
    # or loaded from `weights`); the student matches the average of all teachers' softened outputs
    extra_teachers: list = field(default_factory=list)
    # how teacher and student train (edgekd.schemes): offline, online (mutual learning of
    # `peers` students), born-again (`generations`), ema (teacher = EMA of the student)
    scheme: str = "offline"
    peers: int = 2
    generations: int = 2
    ema_decay: float = 0.999
    _stage = "distill"

    def __post_init__(self):
        super().__post_init__()
        _check(self.temperature > 0, "distill.temperature must be positive")
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha must be between 0 and 1")
        object.__setattr__(self, "terms", [_distill_term(t, i) for i, t in enumerate(_listed(self.terms, "terms"))])
        extra_teacher_configs(self)  # validates each entry
        _check(self.scheme in DISTILL_SCHEMES,
               f"unknown distill.scheme '{self.scheme}'; available: {', '.join(DISTILL_SCHEMES)}")
        _check(self.peers >= 2, f"distill.peers must be >= 2 (mutual learning needs a cohort), got {self.peers}")
        _check(self.generations >= 1, f"distill.generations must be >= 1, got {self.generations}")
        _check(0.0 < self.ema_decay < 1.0, f"distill.ema_decay must be between 0 and 1, got {self.ema_decay}")
        for key in ("terms", "extra_teachers"):  # these schemes have no teacher to read them from
            _check(not (getattr(self, key) and self.scheme in ("online", "ema")),
                   f"distill.{key} needs the teacher, and distill.scheme '{self.scheme}' trains without one; "
                   f"remove distill.{key} or use scheme offline or born-again")


DISTILL_SCHEMES = ("offline", "online", "born-again", "ema")

# distill.terms: each kind's keys and defaults (weights as in the papers' reference code);
# student/teacher: a layer name or a list of them, paired in order (rkd: null = the input
# of the classifier, i.e. the penultimate features)
DISTILL_TERMS = {
    "fitnet": {"student": None, "teacher": None, "weight": 1.0},
    "at": {"student": None, "teacher": None, "weight": 1000.0, "p": 2.0},
    "sp": {"student": None, "teacher": None, "weight": 3000.0},
    "rkd": {"student": None, "teacher": None, "distance": 25.0, "angle": 50.0},
}


def _listed(value, key: str) -> list:
    _check(isinstance(value, list), f"distill.{key} must be a list")
    return value


def _distill_term(raw, index: int) -> dict:
    """One distill.terms entry, checked, with its defaults filled in and layers as lists."""
    where = f"distill.terms[{index}]"
    _check(isinstance(raw, dict) and "kind" in raw, f"{where} must be a mapping with a 'kind'")
    kind = raw["kind"]
    _check(kind in DISTILL_TERMS, f"unknown {where}.kind '{kind}'; available: {', '.join(DISTILL_TERMS)}")
    known = DISTILL_TERMS[kind]
    unknown = [k for k in raw if k != "kind" and k not in known]
    _check(not unknown, f"unknown key '{where}.{unknown[0] if unknown else ''}' for kind {kind}; known: {', '.join(known)}")
    term = {"kind": kind, **known, **{k: v for k, v in raw.items() if k != "kind"}}
    for key in ("weight", "p", "distance", "angle"):
        if key in term:
            value = term[key]
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"),
                   f"{where}.{key} must be a number >= 0, got {value!r}")
            term[key] = float(value)
    _check(term.get("weight", 1.0) > 0 and term.get("p", 1.0) > 0, f"{where}: weight and p must be positive")
    _check(kind != "rkd" or term["distance"] + term["angle"] > 0, f"{where}: distance and angle are both 0")
    for side in ("student", "teacher"):
        value = term[side]
        if isinstance(value, str):
            value = [value]
        _check(value is not None or kind == "rkd", f"{where} ({kind}) needs '{side}': a layer name or a list of them")
        _check(value is None or (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)),
               f"{where}.{side} must be a layer name or a non-empty list of layer names")
        term[side] = value
    _check((term["student"] is None) == (term["teacher"] is None)
           and (term["student"] is None or len(term["student"]) == len(term["teacher"])),
           f"{where}: student and teacher must name as many layers each ({term['student']} vs {term['teacher']})")
    _check(kind != "rkd" or term["student"] is None or len(term["student"]) == 1,
           f"{where}: rkd takes one layer per side (the embedding)")
    return term


def extra_teacher_configs(cfg: DistillConfig) -> list:
    """distill.extra_teachers as TeacherConfigs (their keys are those of the teacher section)."""
    configs = []
    for i, raw in enumerate(_listed(cfg.extra_teachers, "extra_teachers")):
        where = f"distill.extra_teachers[{i}]"
        _check(isinstance(raw, dict), f"{where} must be a mapping like the teacher section")
        _check(raw.get("transfer") is None, f"{where}.transfer is not supported; give trained weights instead")
        try:
            teacher = _build(TeacherConfig, raw, where + ".", "the recipe")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(" (in the recipe)", "").replace(" in the recipe", "")) from None
        _check(teacher.weights is not None or teacher.epochs > 0,
               f"{where}: epochs is 0 and weights is not set: train it or give its weights")
        configs.append(teacher)
    return configs


PRUNE_IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")
PRUNE_FINETUNE = ("step", "end")


@dataclass(frozen=True)
class PruneConfig(TrainConfig):
    """Structured channel pruning of the distilled student (off by default).

    `steps` rounds of: remove a share of the channels, then `epochs` of KD fine-tuning
    from the teacher (temperature and alpha from distill). The first convolution and the
    classifier are protected, plus the layers named in `protect`. `target_macs` and/or
    `target_params`: stop at the first step at or below them (`ratio` is then the most removed).

    Latency target (edgekd.prune_latency): with `target_latency_ms` (absolute p50) and/or
    `target_speedup` (over the unpruned model timed in the same loop), `latency_step` of
    the channels go per step, at most `ratio` in all, and each candidate is exported
    (int8 when quantize is on) and timed on bench.provider at batch 1 with bench.threads,
    until it meets the target. `finetune`: 'step' (KD after every step) or 'end' (once).
    `sparsity` > 0: network slimming, `sparsity_epochs` of training with that L1 penalty
    on the batch-norm scales before pruning (for importance 'bn_scale').
    """

    enabled: bool = False
    ratio: float = 0.5  # share of channels removed from each prunable layer (all steps together)
    importance: str = "l1"
    global_pruning: bool = False
    round_to: int = 8  # channel counts stay multiples of this, so kernels stay fast
    protect: list = field(default_factory=list)
    steps: int = 1
    epochs: int = 2
    lr: float = 0.001
    finetune: str = "step"
    target_macs: Optional[int] = None
    target_params: Optional[int] = None
    target_latency_ms: Optional[float] = None
    target_speedup: Optional[float] = None
    latency_step: float = 0.05
    latency_rounds: int = 20  # interleaved timing rounds per candidate (10 runs of each model per round)
    sparsity: float = 0.0
    sparsity_epochs: int = 0
    _stage = "prune"

    @property
    def latency_targeted(self) -> bool:
        return self.target_latency_ms is not None or self.target_speedup is not None

    def __post_init__(self):
        super().__post_init__()
        _check(0.0 < self.ratio < 1.0, "prune.ratio must be between 0 and 1")
        _check(self.finetune in PRUNE_FINETUNE,
               f"unknown prune.finetune '{self.finetune}'; available: {', '.join(PRUNE_FINETUNE)}")
        _check(self.target_macs is None or self.target_macs > 0, "prune.target_macs must be positive")
        _check(self.target_params is None or self.target_params > 0, "prune.target_params must be positive")
        _check(self.target_latency_ms is None or self.target_latency_ms > 0, "prune.target_latency_ms must be positive")
        _check(self.target_speedup is None or self.target_speedup > 0, "prune.target_speedup must be positive")
        _check(0.0 < self.latency_step <= self.ratio,
               f"prune.latency_step must be between 0 and prune.ratio ({self.ratio}), got {self.latency_step}")
        _check(self.latency_rounds >= 1, "prune.latency_rounds must be >= 1")
        _check(self.sparsity >= 0, "prune.sparsity must be >= 0")
        _check(self.sparsity_epochs >= 0, "prune.sparsity_epochs must be >= 0")
        _check(
            self.importance in PRUNE_IMPORTANCES,
            f"unknown prune.importance '{self.importance}'; available: {', '.join(PRUNE_IMPORTANCES)}",
        )
        _check(self.round_to >= 1, "prune.round_to must be >= 1")
        _check(self.steps >= 1, "prune.steps must be >= 1")
        _check(all(isinstance(p, str) for p in self.protect), "prune.protect must be a list of layer names")


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("int8", "uint8")
QUANT_TARGETS = ("auto", "x86-vnni", "x86-avx2", "arm64", "cuda")
QUANT_METHODS = ("ptq", "qat")


@dataclass(frozen=True)
class QatConfig(TrainConfig):
    """Quantization-aware KD fine-tuning (quantize.method: qat), see edgekd.qat.

    `observe_fraction`: share of the steps during which the activation ranges follow a
    moving average of each batch's min/max; after that they are frozen. A short fine-tune
    from the distilled student: low lr, teacher logits cached (augment off)."""

    epochs: int = 2
    lr: float = 0.0005
    augment: bool = False
    observe_fraction: float = 0.5
    _stage = "quantize.qat"

    def __post_init__(self):
        super().__post_init__()
        _check(0.0 <= self.observe_fraction <= 1.0, "quantize.qat.observe_fraction must be between 0 and 1")


@dataclass(frozen=True)
class QuantConfig:
    """Post-training static int8 through ONNX Runtime, QDQ format.

    `target` picks the defaults of activation_type / weight_type / reduce_range /
    per_channel / pad_input_channels_to (see edgekd.quantize.TARGET_PRESETS; 'auto' reads the CPU flags). A field
    left at None takes the target's value; a field set in the recipe always wins.
    `exclude_nodes` / `exclude_op_types` stay float. `max_drop`: the accuracy budget in
    top-1 points on the val split (None: no budget); when int8 loses more, the most
    sensitive nodes are kept in float one by one until it fits, else the run fails (exit 3).
    `method: qat` fine-tunes with fake quantization instead (settings in `qat`; the
    activation type comes from the target as above; calibration, per_channel, weight_type,
    reduce_range and the exclude lists are PTQ-only; max_drop is checked, with no search).
    """

    enabled: bool = True
    method: str = "ptq"
    qat: QatConfig = field(default_factory=QatConfig)
    target: str = "auto"
    calibration: str = "minmax"
    calib_batch_size: int = 32
    per_channel: Optional[bool] = None
    activation_type: Optional[str] = None
    weight_type: Optional[str] = None
    reduce_range: Optional[bool] = None
    pad_input_channels_to: Optional[int] = None
    exclude_nodes: list = field(default_factory=list)
    exclude_op_types: list = field(default_factory=list)
    max_drop: Optional[float] = 1.0

    def __post_init__(self):
        _check(
            self.target in QUANT_TARGETS,
            f"unknown quantize.target '{self.target}'; available: {', '.join(QUANT_TARGETS)}",
        )
        _check(
            self.calibration in CALIBRATION_METHODS,
            f"unknown quantize.calibration '{self.calibration}'; available: {', '.join(CALIBRATION_METHODS)}",
        )
        _check(self.calib_batch_size > 0, "quantize.calib_batch_size must be positive")
        for key in ("activation_type", "weight_type"):
            value = getattr(self, key)
            _check(value is None or value in INT8_TYPES,
                   f"quantize.{key} must be one of {', '.join(INT8_TYPES)}, got '{value}'")
        _check(self.pad_input_channels_to is None
               or (isinstance(self.pad_input_channels_to, int) and not isinstance(self.pad_input_channels_to, bool)
                   and self.pad_input_channels_to >= 0),
               "quantize.pad_input_channels_to must be a whole number >= 0 (0: no padding)")
        for key in ("exclude_nodes", "exclude_op_types"):
            _check(all(isinstance(v, str) and v for v in getattr(self, key)),
                   f"quantize.{key} must be a list of names")
        _check(self.max_drop is None or self.max_drop == self.max_drop,  # not NaN
               "quantize.max_drop must be a number of top-1 points or null")
        _check(self.method in QUANT_METHODS,
               f"unknown quantize.method '{self.method}'; available: {', '.join(QUANT_METHODS)}")
        if self.method == "qat":  # QAT's scheme is fixed: per-channel symmetric int8 weights, nothing float
            _check(self.per_channel in (None, True) and self.weight_type in (None, "int8"),
                   "quantize.method qat uses per-channel int8 weights; remove quantize.per_channel / weight_type")
            _check(not self.exclude_nodes and not self.exclude_op_types,
                   "quantize.exclude_nodes / exclude_op_types are for method ptq; QAT quantizes every layer")


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export; outputs are compared with PyTorch at check_batch_sizes."""

    opset: int = 17
    atol: float = 1e-4
    check_batch_sizes: list = field(default_factory=lambda: [1, 7])

    def __post_init__(self):
        _check(self.opset >= 13, "export.opset must be >= 13 (per-channel QDQ needs it)")
        _check(self.atol > 0, "export.atol must be positive")
        _check(
            len(self.check_batch_sizes) > 0 and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.check_batch_sizes),
            "export.check_batch_sizes must be a list of positive integers",
        )


@dataclass(frozen=True)
class BenchConfig:
    """Latency protocol: warm-up (at least `warmup` runs and `warmup_seconds`), then timed
    runs (at least `runs` and `min_seconds`); ONNX Runtime thread and spinning options;
    `interleave`: time the models side by side (edgekd.bench_measure.measure_interleaved)."""

    provider: str = "cpu"
    batch_size: int = 1
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 1.0
    threads: int = 0  # 0: ONNX Runtime's default
    warmup_seconds: float = 0.0
    inter_threads: int = 0  # > 0: parallel execution mode with this many inter-op threads
    intra_spinning: Optional[bool] = None  # session.intra_op.allow_spinning; None: ORT's default (on)
    inter_spinning: Optional[bool] = None  # session.inter_op.allow_spinning
    # time all models side by side in short rotating rounds instead of one after another
    interleave: bool = False

    def __post_init__(self):
        _check(self.batch_size > 0, "bench.batch_size must be positive")
        _check(self.warmup >= 0, "bench.warmup must be >= 0")
        _check(self.runs > 0, "bench.runs must be positive")
        _check(self.min_seconds >= 0, "bench.min_seconds must be >= 0")
        _check(self.threads >= 0, "bench.threads must be >= 0")
        _check(self.warmup_seconds >= 0, "bench.warmup_seconds must be >= 0")
        _check(self.inter_threads >= 0, "bench.inter_threads must be >= 0")
        _check(isinstance(self.interleave, bool), "bench.interleave must be true or false")


@dataclass(frozen=True)
class Recipe:
    """The whole run. `seed` drives data splits, initialization, data order and
    augmentation; `deterministic` also makes PyTorch use deterministic algorithms only
    (torch.use_deterministic_algorithms), so that a rerun, or a run resumed from a
    checkpoint, ends with the same weights on the same machine and thread count."""

    name: str = "default"
    seed: int = 0
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantConfig = field(default_factory=QuantConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self):
        _check(bool(self.name) and "/" not in self.name, "name must be a non-empty string without '/'")

    # -- reading and writing -------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, source: str = "<recipe>") -> "Recipe":
        return _build(cls, raw if raw is not None else {}, "", source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple = ()) -> "Recipe":
        raw = read_yaml(path)
        resolve_file_paths(raw, Path(path).parent)
        for item in overrides:  # paths given on the command line stay relative to the current folder
            apply_override(raw, item)
        return cls.from_dict(raw, str(path))

    @classmethod
    def default(cls, overrides: list[str] | tuple = ()) -> "Recipe":
        from importlib.resources import files

        text = (files("edgekd") / "recipes" / DEFAULT_RECIPE).read_text()
        raw = parse_yaml_mapping(text, "edgekd/recipes/" + DEFAULT_RECIPE)
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw, "edgekd/recipes/" + DEFAULT_RECIPE)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolve_file_paths(raw: dict, recipe_dir: Path) -> None:
    """A recipe names files (data.path, teacher.weights, teacher.transfer.pretrained,
    distill.extra_teachers[i].weights) relative to its own folder, so that it runs from any
    current folder; a relative path that is not there keeps meaning the current folder's."""

    def fix(section, key):
        if not isinstance(section, dict) or not isinstance(section.get(key), str):
            return
        value = Path(section[key]).expanduser()
        if not value.is_absolute() and (recipe_dir / value).exists():
            section[key] = str((recipe_dir / value).resolve())

    fix(raw.get("data"), "path")
    teacher = raw.get("teacher")
    fix(teacher, "weights")
    fix(teacher.get("transfer") if isinstance(teacher, dict) else None, "pretrained")
    distill = raw.get("distill")
    extra = distill.get("extra_teachers") if isinstance(distill, dict) else None
    for entry in extra if isinstance(extra, list) else []:
        fix(entry, "weights")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file '{path}' does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe '{path}': {exc}") from exc
    return parse_yaml_mapping(text, str(path))


def parse_yaml_mapping(text: str, source: str, expected: str = "a mapping of stage names to settings") -> dict:
    """YAML text that must hold a mapping (empty text gives {}); errors name `source`."""
    import yaml

    try:
        raw = yaml.safe_load(text)  # safe_load: no Python object tags are ever constructed
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source} is not valid YAML: {first}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be {expected}, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """Apply one 'stage.key=value' override (the value is parsed as YAML) to a raw dict."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (for example teacher.epochs=3), got '{item}'")
    key, value_text = item.split("=", 1)
    try:
        value = yaml.safe_load(value_text) if value_text != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value '{value_text}'") from exc
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, raw: Any, prefix: str, source: str):
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} in {source} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"unknown key '{prefix}{key}' in {source}; known keys here: {', '.join(fields)}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        values[key] = _convert(hints[key], value, f"{prefix}{key}", source)
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {source})") from None


def _convert(hint, value, key: str, source: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".", source)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, source)
    expected = origin or hint

    def wrong():
        return ConfigError(
            f"key '{key}' in {source} must be of type {getattr(expected, '__name__', expected)}, "
            f"got {value!r} ({type(value).__name__})"
        )

    if expected is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if expected is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if expected in (list, dict):
        if not isinstance(value, expected):
            raise wrong()
        return value
    raise wrong()  # pragma: no cover - every field type is handled above


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
