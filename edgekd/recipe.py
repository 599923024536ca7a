"""A recipe is data: frozen dataclasses per stage, read from YAML with yaml.safe_load.

Each stage's config lives with its concern (data/config.py, train/config.py,
distill/config.py, prune/config.py, quant/config.py, onnx_export.py, runtime/config.py);
this module composes them into the Recipe and reads and writes YAML. Their dataclass
defaults are the default recipe: `edgekd compress` with no argument runs `Recipe()`, and
a recipe that leaves out a section or key gets exactly what the default run gets.

Unknown keys and wrong types are ConfigErrors that name the key and the file, CLI
``--set stage.key=value`` overrides any field (the value is YAML), other flags set fields
directly (Recipe.replace), and the resolved recipe is written into the run directory so
the run can be repeated exactly. Setting a section's `arch` without its `arch_args`
starts from no arch_args: another architecture's arguments would not fit it.
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
from edgekd.registry import import_plugins
from edgekd.onnx_export import ExportConfig
from edgekd.prune.config import PruneConfig
from edgekd.quant.config import QuantConfig
from edgekd.runtime.config import BenchConfig
from edgekd.train.config import TeacherConfig

@dataclass(frozen=True)
class Recipe:
    """The whole run. `seed` drives data splits, initialization, data order and
    augmentation; `deterministic` also makes PyTorch use deterministic algorithms only
    (torch.use_deterministic_algorithms), so that a rerun, or a run resumed from a
    checkpoint, ends with the same weights on the same machine and thread count."""

    name: str = "default"
    seed: int = 0
    # modules imported before the recipe is checked: they register data formats, architectures,
    # distillation terms, importances, calibrators or providers (edgekd.registry). Code: trust them
    plugins: list = field(default_factory=list)
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
        raw = raw if raw is not None else {}
        if isinstance(raw, dict) and raw.get("plugins"):
            import_plugins(raw["plugins"], source)  # their names must be known before the sections are checked
        return build_config(cls, raw, "", source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple = ()) -> "Recipe":
        raw = read_yaml(path)
        resolve_file_paths(raw, Path(path).parent)
        for item in overrides:  # paths given on the command line stay relative to the current folder
            apply_override(raw, item)
        return cls.from_dict(raw, str(path))

    @classmethod
    def default(cls, overrides: list[str] | tuple = ()) -> "Recipe":
        """The built-in default recipe (the dataclass defaults), with `--set` overrides."""
        raw: dict = {}
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw, "the default recipe")

    def replace(self, **fields) -> "Recipe":
        """A copy with fields set directly, top-level or 'section.key' (given as
        section__key): how CLI flags such as --data or --seed reach the recipe. The new
        values are checked as the dataclasses check them."""
        top, sections = {}, {}
        for key, value in fields.items():
            section, _, name = key.partition("__")
            if name:
                sections.setdefault(section, {})[name] = value
            else:
                top[key] = value
        for section, values in sections.items():
            top[section] = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **top)

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
