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
class TeacherConfig(TrainConfig):
    """The teacher: trained here (epochs > 0) or loaded from weights (then epochs may be 0)."""

    arch: str = "resnet20"
    arch_args: dict = field(default_factory=dict)
    weights: Optional[str] = None
    _stage = "teacher"


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Hinton KD into the student: loss = (1-alpha)*CE + alpha*T^2*KL(teacher_T || student_T)."""

    arch: str = "tinycnn"
    arch_args: dict = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.9
    _stage = "distill"

    def __post_init__(self):
        super().__post_init__()
        _check(self.temperature > 0, "distill.temperature must be positive")
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha must be between 0 and 1")


PRUNE_IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")


@dataclass(frozen=True)
class PruneConfig(TrainConfig):
    """Structured channel pruning of the distilled student (off by default).

    `steps` rounds of: remove a share of the channels, then `epochs` of KD fine-tuning
    from the teacher (temperature and alpha from distill). The first convolution and the
    classifier are protected, plus the layers named in `protect`.
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
    _stage = "prune"

    def __post_init__(self):
        super().__post_init__()
        _check(0.0 < self.ratio < 1.0, "prune.ratio must be between 0 and 1")
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


@dataclass(frozen=True)
class QuantConfig:
    """Post-training static int8 through ONNX Runtime, QDQ format.

    `target` picks the defaults of activation_type / weight_type / reduce_range /
    per_channel (see edgekd.quantize.TARGET_PRESETS; 'auto' reads the CPU flags). A field
    left at None takes the target's value; a field set in the recipe always wins.
    `exclude_nodes` / `exclude_op_types` stay float. `max_drop`: the accuracy budget in
    top-1 points on the val split (None: no budget); when int8 loses more, the most
    sensitive nodes are kept in float one by one until it fits, else the run fails (exit 3).
    """

    enabled: bool = True
    target: str = "auto"
    calibration: str = "minmax"
    calib_batch_size: int = 32
    per_channel: Optional[bool] = None
    activation_type: Optional[str] = None
    weight_type: Optional[str] = None
    reduce_range: Optional[bool] = None
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
        for key in ("exclude_nodes", "exclude_op_types"):
            _check(all(isinstance(v, str) and v for v in getattr(self, key)),
                   f"quantize.{key} must be a list of names")
        _check(self.max_drop is None or self.max_drop == self.max_drop,  # not NaN
               "quantize.max_drop must be a number of top-1 points or null")


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
    """Latency protocol: warm-up runs, then timed runs (at least `runs` and `min_seconds`)."""

    provider: str = "cpu"
    batch_size: int = 1
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 1.0
    threads: int = 0  # 0: ONNX Runtime's default

    def __post_init__(self):
        _check(self.batch_size > 0, "bench.batch_size must be positive")
        _check(self.warmup >= 0, "bench.warmup must be >= 0")
        _check(self.runs > 0, "bench.runs must be positive")
        _check(self.min_seconds >= 0, "bench.min_seconds must be >= 0")
        _check(self.threads >= 0, "bench.threads must be >= 0")


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
        for item in overrides:
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
