"""A recipe is data: frozen dataclasses per stage, read from YAML with yaml.safe_load.

Unknown keys and wrong types are ConfigErrors that name the key and the file, CLI
``--set stage.key=value`` overrides any field, and the resolved recipe is written into
the run directory so the run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.configtools import build_config, require
from edgekd.data.config import DataConfig
from edgekd.distill.config import DistillConfig
from edgekd.errors import ConfigError
from edgekd.onnx_export import ExportConfig
from edgekd.prune.config import PruneConfig
from edgekd.quant.config import QuantConfig
from edgekd.runtime.config import BenchConfig
from edgekd.train.config import TeacherConfig

DEFAULT_RECIPE = "default.yaml"  # inside edgekd/recipes/


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
        require(bool(self.name) and "/" not in self.name, "name must be a non-empty string without '/'")

    # -- reading and writing -------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, source: str = "<recipe>") -> "Recipe":
        return build_config(cls, raw if raw is not None else {}, "", source)

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
