"""Building frozen config dataclasses from raw YAML data: type conversion, unknown-key
errors that name the key and the file, and the checks the sections' __post_init__ share:
`require`, `check_number` (type, finiteness, float32's range: check_float32, and the largest
sensible value), `check_path` and `check_arch_args`.

Every message is one short line: values are quoted through `shown` (a bounded repr), and
`clip` caps a whole message, so a huge or deeply nested value never floods the terminal.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from typing import Any

from edgekd.errors import ConfigError

MAX_MESSAGE = 300  # characters of one error line
MAX_SHOWN = 60  # characters of a value quoted in a message

# Upper bounds shared by the sections (lower bounds are in each section's __post_init__).
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**20
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_NAME_LENGTH = 200  # names: architectures, registry entries, layers
MAX_PATH_LENGTH = 4096
MAX_LIST_LENGTH = 1000

# float32's smallest normal and largest finite numbers (numpy.finfo(numpy.float32).tiny / .max)
FLOAT32_TINY = 1.1754943508222875e-38
FLOAT32_MAX = 3.4028234663852886e38

# arch_args: keyword arguments of a model factory, plain data of a bounded size
MAX_ARCH_ARGS = 32
MAX_ARCH_ARGS_ITEMS = 256
MAX_ARCH_ARGS_DEPTH = 4

# The arguments of the built-in architectures (edgekd.models.zoo), checked without torch when
# a recipe is read and again when the model is built: (type, largest value); all are > 0.
WIDTH_MULTIPLIER = (float, 16.0)  # resnet / mobilenetv2 `width`: 16x the paper's channels
BUILTIN_ARCH_ARGS = {
    "resnet8": {"width": WIDTH_MULTIPLIER},
    "resnet20": {"width": WIDTH_MULTIPLIER},
    "resnet56": {"width": WIDTH_MULTIPLIER},
    "mobilenetv2": {"width": WIDTH_MULTIPLIER, "last_channels": (int, 10_000)},
    "tinycnn": {"width": (int, 1024)},  # channels of the first block (the last has 4x)
}

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_SHOWN
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6
_REPR.maxlevel = 3


def shown(value: Any) -> str:
    """A value as quoted in a message: its repr, bounded (reprlib, then at most MAX_SHOWN
    characters), so that quoting never costs more than a few dozen characters."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails: name the type instead
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def clip(message: str, limit: int = MAX_MESSAGE) -> str:
    """One line of at most `limit` characters: the start, and the end (where ' (in FILE)' is)."""
    line = " ".join(str(message).split())
    if len(line) <= limit:
        return line
    tail = min(80, limit // 3)
    return line[: limit - tail - 5] + " ... " + line[-tail:]


def did_you_mean(name, candidates, prefix: str = "") -> str:
    """' (did you mean 'x'?)' (or 'x', 'y' or 'z') for the known names closest to a misspelt
    `name` (difflib), '' when none is close; `prefix` (a section's 'teacher.') is shown before each."""
    import difflib

    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=3, cutoff=0.6)
    if not close:
        return ""
    quoted = [f"'{prefix}{c}'" for c in close]
    return f" (did you mean {' or '.join([', '.join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)}?)"


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(clip(message))


def require_list(value, key: str) -> list:
    require(isinstance(value, list), f"distill.{key} must be a list")
    require(len(value) <= MAX_LIST_LENGTH, f"distill.{key} has {len(value)} entries; at most {MAX_LIST_LENGTH}")
    return value


def _fmt(bound) -> str:
    return f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"


def check_number(value, key: str, *, high=None, integer: bool = False, optional: bool = False) -> None:
    """`value` is a number (an int if `integer`; never a bool), finite, representable in
    float32 (check_float32) and at most `high` (None: a range check of the section's own says
    more). Lower bounds stay with each section's own checks, whose messages name them."""
    if optional and value is None:
        return
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool)
        require(ok, f"{key} must be a whole number, got {shown(value)}")
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        require(ok, f"{key} must be a finite number, got {shown(value)}")
        check_float32(value, key)
    if high is not None and value > high:
        raise ConfigError(clip(f"{key} must be at most {_fmt(high)}, got {shown(value)}"))


def check_float32(value, key: str) -> None:
    """A recipe number that training, quantization or ONNX Runtime computes with in float32
    must survive the conversion: 0, or a magnitude between float32's smallest normal number
    (FLOAT32_TINY, 1.18e-38; smaller ones become 0 or lose their precision, and a "> 0" check
    passed in float64 then divides by 0 or crashes a sampler) and its largest (inf beyond).
    The one rule for every recipe float: check_number, arch_args and preflight's walk call it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0 or not math.isfinite(value):
        return
    if abs(value) < FLOAT32_TINY:
        raise ConfigError(clip(f"{key} is {shown(value)}, which float32 (the precision edgekd computes in) "
                               f"cannot hold: it becomes 0; use 0 or a value of at least {FLOAT32_TINY:.3g}"))
    if abs(value) > FLOAT32_MAX:
        raise ConfigError(clip(f"{key} is {shown(value)}, beyond float32's largest number ({FLOAT32_MAX:.4g}): it "
                               "becomes inf; use a smaller value"))


def check_flag(value, key: str, *, optional: bool = False) -> None:
    require(isinstance(value, bool) or (optional and value is None), f"{key} must be true or false, got {shown(value)}")


def check_name(value, key: str, *, optional: bool = False) -> None:
    """A short non-empty string on one line: an architecture, a registry entry, a layer."""
    if optional and value is None:
        return
    require(isinstance(value, str) and value and len(value) <= MAX_NAME_LENGTH and value.isprintable(),
            f"{key} must be a name of at most {MAX_NAME_LENGTH} printable characters, got {shown(value)}")


def check_path(value, key: str, *, optional: bool = True) -> None:
    """A file or folder name: a non-empty string without NUL, of a length the OS accepts."""
    if optional and value is None:
        return
    require(isinstance(value, str) and value and "\x00" not in value and len(value) <= MAX_PATH_LENGTH,
            f"{key} must be a path (a non-empty string of at most {MAX_PATH_LENGTH} characters, "
            f"no NUL), got {shown(value)}")


def check_names(value, key: str, *, max_length: int = MAX_LIST_LENGTH) -> None:
    """A list of names (check_name), at most `max_length` of them."""
    require(isinstance(value, list) and len(value) <= max_length,
            f"{key} must be a list of at most {max_length:,} names, got {shown(value)}")
    for i, item in enumerate(value):
        check_name(item, f"{key}[{i}]")


def check_arch_args(value, key: str) -> None:
    """arch_args: a mapping of argument names to plain data (numbers finite, strings short),
    of a bounded size. Whether the architecture accepts them is checked when it is built
    (edgekd.models.zoo.build_model turns its refusal into a ConfigError naming the arch)."""
    require(isinstance(value, dict), f"{key} must be a mapping of argument names to values, got {shown(value)}")
    require(len(value) <= MAX_ARCH_ARGS, f"{key} has {len(value)} arguments; at most {MAX_ARCH_ARGS}")
    for name in value:
        require(isinstance(name, str) and name.isidentifier(),
                f"{key}: argument names must be identifiers, got {shown(name)}")
    count = 0

    def walk(item, where: str, depth: int) -> None:
        nonlocal count
        count += 1
        require(count <= MAX_ARCH_ARGS_ITEMS, f"{key} holds more than {MAX_ARCH_ARGS_ITEMS} values")
        require(depth <= MAX_ARCH_ARGS_DEPTH, f"{key} is nested deeper than {MAX_ARCH_ARGS_DEPTH} levels")
        if isinstance(item, float):
            require(math.isfinite(item), f"{where} must be a finite number, got {shown(item)}")
            check_float32(item, where)
        elif isinstance(item, str):
            require(len(item) <= MAX_NAME_LENGTH, f"{where} is a string of {len(item):,} characters; at most "
                    f"{MAX_NAME_LENGTH}")
        elif isinstance(item, (list, tuple)):
            for i, sub in enumerate(item):
                walk(sub, f"{where}[{i}]", depth + 1)
        elif isinstance(item, dict):
            for sub_key, sub in item.items():
                require(isinstance(sub_key, str), f"{where}: keys must be strings, got {shown(sub_key)}")
                walk(sub, f"{where}.{shown(sub_key)}", depth + 1)
        else:
            require(item is None or isinstance(item, (bool, int)),
                    f"{where} must be a number, string, list or mapping, got {type(item).__name__}")

    for name, item in value.items():
        walk(item, f"{key}.{name}", 1)


def check_builtin_arch_args(arch: str, arch_args: dict, key: str) -> None:
    """The values of a built-in architecture's arguments (BUILTIN_ARCH_ARGS) that arch_args
    sets: positive numbers of the right type, at most their bound. Other architectures, and
    argument names the table does not list, are checked when the model is built."""
    for name, (kind, high) in BUILTIN_ARCH_ARGS.get(arch, {}).items():
        if name not in arch_args:
            continue
        value = arch_args[name]
        allowed = int if kind is int else (int, float)
        ok = isinstance(value, allowed) and not isinstance(value, bool) and 0 < value <= high
        what = "a whole number" if kind is int else "a number"
        require(ok, f"{key}.{name} of architecture '{arch}' must be {what} > 0 and at most {_fmt(high)}, "
                    f"got {shown(value)}")


def build_config(cls, raw: Any, prefix: str, source: str):
    """A config dataclass from a raw mapping: unknown keys and wrong types are errors that
    name the key (prefix + key) and the file (source)."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(clip(f"{where} in {source} must be a mapping, got {type(raw).__name__}"))
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    for key in raw:
        if key not in fields:
            raise ConfigError(clip(
                f"unknown key '{prefix}{shown(key).strip(chr(39))}' in {source}"
                f"{did_you_mean(key, fields, prefix)}; known keys here: {', '.join(fields)}"
            ))
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        values[key] = convert_value(hints[key], value, f"{prefix}{key}", source)
    if "arch" in raw and "arch_args" in fields and "arch_args" not in raw:
        values["arch_args"] = {}  # the default arch's arguments do not fit another architecture
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(clip(f"{exc} (in {source})")) from None


def convert_value(hint, value, key: str, source: str):
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value if value is not None else {}, key + ".", source)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        first_error = None
        for arg in args:  # the first type the value converts to (bool | str: true, false or 'auto')
            try:
                return convert_value(arg, value, key, source)
            except ConfigError as exc:
                first_error = first_error or exc
        raise first_error
    expected = origin or hint

    def wrong():
        return ConfigError(clip(
            f"key '{key}' in {source} must be of type {getattr(expected, '__name__', expected)}, "
            f"got {shown(value)} ({type(value).__name__})"
        ))

    if expected is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise wrong()
        try:
            number = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except (ValueError, OverflowError):  # not a number; an int too large for a float
            raise wrong() from None
        if not math.isfinite(number):
            raise ConfigError(clip(f"key '{key}' in {source} must be a finite number, got {shown(value)}"))
        return number
    if expected is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if expected in (list, dict):
        if not isinstance(value, expected):
            raise wrong()
        return value
    raise wrong()  # pragma: no cover - every field type is handled above
