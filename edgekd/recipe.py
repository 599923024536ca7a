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
import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.configtools import MAX_LIST_LENGTH, MAX_NAME_LENGTH, build_config, clip, require, shown
from edgekd.data.config import DataConfig
from edgekd.distill.config import DistillConfig
from edgekd.errors import ConfigError
from edgekd.onnx_export import ExportConfig
from edgekd.prune.config import PruneConfig
from edgekd.quant.config import QuantConfig
from edgekd.registry import import_plugins
from edgekd.runtime.config import BenchConfig
from edgekd.train.config import ComputeConfig, TeacherConfig

MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed take any seed in 0..2**32-1
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few kilobytes; this caps what is parsed at all
MAX_YAML_NODES = 100_000  # nodes after alias expansion: anchors may share, never multiply
MAX_YAML_CHARS = 2_000_000  # characters of the scalars after alias expansion
MAX_YAML_DEPTH = 50  # nesting levels (PyYAML composes nested nodes recursively)
MAX_OVERRIDE_CHARS = 100_000  # one --set item
# old section name -> new name: the old one is still read, with a warning, until it is removed
RENAMED_SECTIONS = {"train": "compute"}
logger = logging.getLogger("edgekd")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


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
    # where training runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # was `train:` (RENAMED_SECTIONS)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantConfig = field(default_factory=QuantConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self):
        name_ok = isinstance(self.name, str) and bool(self.name) and "/" not in self.name
        require(name_ok, f"name must be a non-empty string without '/', got {shown(self.name)}")
        require(len(self.name) <= MAX_NAME_LENGTH and self.name.isprintable() and "\\" not in self.name
                and self.name not in (".", ".."),
                f"name must be at most {MAX_NAME_LENGTH} printable characters, not '.' or '..', without '\\', "
                f"got {shown(self.name)}")
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
                f"seed must be a whole number in 0..{MAX_SEED} (2**32-1), got {shown(self.seed)}")
        check_plugins(self.plugins, "the recipe")
        require(isinstance(self.deterministic, bool),
                f"deterministic must be true or false, got {shown(self.deterministic)}")
        from edgekd.train.compute import check_device_name

        check_device_name(self.device)

    # -- reading and writing -------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, source: str = "<recipe>") -> "Recipe":
        raw = raw if raw is not None else {}
        if isinstance(raw, dict) and raw.get("plugins"):
            check_plugins(raw["plugins"], source)
            try:
                import_plugins(raw["plugins"], source)  # their names must be known before the sections are checked
            except ConfigError as exc:
                raise ConfigError(clip(str(exc))) from exc.__cause__
        return build_config(cls, renamed_sections(raw, source), "", source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple = ()) -> "Recipe":
        raw = read_yaml(path)
        resolve_file_paths(raw, Path(path).parent)
        return cls._with_overrides(raw, overrides, str(path))

    @classmethod
    def default(cls, overrides: list[str] | tuple = ()) -> "Recipe":
        """The built-in default recipe (the dataclass defaults), with `--set` overrides."""
        return cls._with_overrides({}, overrides, "the default recipe")

    @classmethod
    def _with_overrides(cls, raw: dict, overrides, source: str) -> "Recipe":
        """The recipe `raw` with `--set` items applied; an error that only the overrides bring
        names --set as its source rather than the recipe."""
        import copy

        raw = renamed_sections(raw, source)  # once, so that an old name warns once
        merged = copy.deepcopy(raw)
        for item in overrides:  # paths given on the command line stay relative to the current folder
            apply_override(merged, item)
        try:
            return cls.from_dict(merged, source)
        except ConfigError:
            if not overrides or not cls._builds(raw, source):
                raise
        return cls.from_dict(merged, "--set")  # the recipe alone is valid: the overrides' error, named so

    @classmethod
    def _builds(cls, raw: dict, source: str) -> bool:
        try:
            cls.from_dict(raw, source)
        except ConfigError:
            return False
        return True

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


def renamed_sections(raw, source: str):
    """`raw` with each old section name (RENAMED_SECTIONS) replaced by its new one, with a
    warning that names both; a recipe that gives both names is a ConfigError."""
    if not isinstance(raw, dict):
        return raw
    for old, new in RENAMED_SECTIONS.items():
        if old in raw:
            if new in raw:
                raise ConfigError(clip(f"{source} has both '{old}:' and '{new}:' sections; '{old}:' is the old name "
                                       f"of '{new}:': keep only '{new}:'"))
            deprecated_name(old, new, source)
            raw = {(new if key == old else key): value for key, value in raw.items()}
    return raw


def deprecated_name(old: str, new: str, source: str) -> None:
    logger.warning(clip(f"{source}: '{old}' is deprecated, use '{new}' (it was renamed; '{old}' will be removed in a "
                        "later version)"))


def resolve_file_paths(raw: dict, recipe_dir: Path) -> None:
    """A recipe names files (data.path, data.unlabeled, teacher.weights, teacher.transfer.pretrained,
    distill.extra_teachers[i].weights) relative to its own folder, so that it runs from any
    current folder; a relative path that is not there keeps meaning the current folder's."""

    def fix(section, key):
        if not isinstance(section, dict) or not isinstance(section.get(key), str):
            return
        try:
            value = Path(section[key]).expanduser()
            if not value.is_absolute() and (recipe_dir / value).exists():
                section[key] = str((recipe_dir / value).resolve())
        except (OSError, ValueError, RuntimeError):  # NUL, too long, ~unknown-user: the section's checks say so
            return

    fix(raw.get("data"), "path")
    fix(raw.get("data"), "unlabeled")
    teacher = raw.get("teacher")
    fix(teacher, "weights")
    fix(teacher, "onnx")
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
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(clip(f"cannot read recipe '{path}': {exc}")) from exc
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(clip(f"recipe '{path}' is larger than {MAX_RECIPE_BYTES:,} bytes; a recipe is a few "
                               "kilobytes of settings, so this is not one"))
    return parse_yaml_mapping(text, str(path))


def parse_yaml_mapping(text: str, source: str, expected: str = "a mapping of stage names to settings") -> dict:
    """YAML text that must hold a mapping (empty text gives {}); errors name `source`."""
    raw = load_yaml(text, source)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(clip(f"{source} must be {expected}, got {type(raw).__name__}"))
    return raw


def load_yaml(text: str, source: str):
    """yaml.safe_load with bounds: no Python object tags are ever constructed (SafeLoader),
    nesting is at most MAX_YAML_DEPTH levels, and what aliases expand to is at most
    MAX_YAML_NODES nodes and MAX_YAML_CHARS characters (a few hundred bytes of anchors can
    otherwise stand for gigabytes); checked on the composed nodes, before construction."""
    import yaml

    try:
        value = yaml.load(text, Loader=bounded_loader())  # a SafeLoader subclass
    except YamlTooLarge as exc:
        raise ConfigError(clip(f"{source}: {exc}; refusing it")) from None
    except Exception as exc:  # YAMLError, or what constructors raise: ValueError for 2024-13-45, ...
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else type(exc).__name__
        if isinstance(exc, RecursionError):
            first = "nested too deeply"
        mark = getattr(exc, "problem_mark", None)  # PyYAML's position of the problem, 0-based
        if mark is not None:
            problem = getattr(exc, "problem", None) or first
            first = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        raise ConfigError(clip(f"{source} is not valid YAML: {first}")) from None
    check_colon_keys(value, source)
    return value


def check_colon_keys(value, source: str) -> None:
    """ConfigError for a flow mapping written without a space after its colons: YAML reads
    {width:32} as one key 'width:32' with no value, which would later fail as an unknown name."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None and isinstance(key, str) and ":" in key.strip(":"):
                name, _, meant = key.partition(":")  # what the user meant as the value
                raise ConfigError(clip(f"{source}: YAML reads {shown(key)} as one key without a value; put a space "
                                       f"after the colon: {{{name}: {meant}}}"))
            check_colon_keys(item, source)
    elif isinstance(value, list):
        for item in value:
            check_colon_keys(item, source)


class YamlTooLarge(Exception):
    """YAML whose nesting or alias expansion exceeds the bounds of load_yaml."""


@functools.cache
def bounded_loader():
    """The SafeLoader subclass of load_yaml (built on first use: yaml is imported lazily)."""
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise YamlTooLarge(f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def get_single_node(self):
            node = super().get_single_node()
            if node is not None:
                check_expansion(node, yaml.ScalarNode, yaml.MappingNode)
            return node

    return BoundedSafeLoader


def check_expansion(root, scalar_type, mapping_type) -> None:
    """YamlTooLarge when the node graph (aliases are shared nodes) expands to more than
    MAX_YAML_NODES nodes or MAX_YAML_CHARS characters, or refers to itself. Each node is
    visited once; sizes are capped, so the numbers stay small whatever the expansion."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]

    def children(node):
        if isinstance(node, scalar_type):
            return []
        if isinstance(node, mapping_type):
            return [item for pair in node.value for item in pair]
        return list(node.value)

    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            nodes, chars = 1, len(node.value) if isinstance(node, scalar_type) else 0
            for child in children(node):
                child_nodes, child_chars = sizes[id(child)]
                nodes, chars = min(nodes + child_nodes, MAX_YAML_NODES + 1), min(chars + child_chars, MAX_YAML_CHARS + 1)
            sizes[key] = (nodes, chars)
            if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                raise YamlTooLarge(f"its aliases expand to more than {MAX_YAML_NODES:,} values or "
                                   f"{MAX_YAML_CHARS:,} characters")
            continue
        if key in sizes:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in children(node):
            if id(child) in open_nodes:
                raise YamlTooLarge("an alias refers to a node that contains it (a recursive structure)")
            if id(child) not in sizes:
                stack.append((child, False))


def check_plugins(modules, source: str) -> None:
    """The recipe's `plugins` are module names (importing them is importing code): a list of
    dotted names, checked before anything is imported."""
    if not modules:
        return
    require(isinstance(modules, list) and len(modules) <= MAX_LIST_LENGTH,
            f"plugins in {source} must be a list of module names, got {shown(modules)}")
    for name in modules:
        require(isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _MODULE_NAME.match(name) is not None,
                f"plugins in {source}: {shown(name)} is not a module name (dotted Python identifiers)")


def check_override_pairs(overrides, following: str | None) -> None:
    """`--set teacher.epochs 2` (no '='): click reads 2 as the next argument (the RECIPE);
    say what was meant before that is read as a file name."""
    for item in overrides:
        if isinstance(item, str) and "=" not in item:
            value = following if following is not None and not Path(following).is_file() else "VALUE"
            raise ConfigError(clip(f"--set takes KEY=VALUE: did you mean --set {item.strip()}={value}?"))


def apply_override(raw: dict, item: str) -> None:
    """Apply one 'stage.key=value' override (the value is parsed as YAML) to a raw dict."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(clip(f"--set expects KEY=VALUE (for example teacher.epochs=3), got {shown(item)}"))
    if len(item) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"--set item of {len(item):,} characters; at most {MAX_OVERRIDE_CHARS:,}")
    key, value_text = item.split("=", 1)
    key_shown = shown(key.strip()).strip("'")
    try:
        value = load_yaml(value_text, "--set") if value_text != "" else None
    except ConfigError as exc:
        raise ConfigError(clip(f"--set {key_shown}: cannot parse value {shown(value_text)} ({exc})")) from None
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(clip(f"--set expects KEY=VALUE, got {shown(item)}"))
    if parts[0] in RENAMED_SECTIONS:
        new = RENAMED_SECTIONS[parts[0]]
        deprecated_name(".".join(parts[:2]), ".".join([new, *parts[1:2]]), "--set")
        parts[0] = new
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(clip(f"--set {key_shown}: {shown(part)} is not a section"))
        node = child
    node[parts[-1]] = value
