"""Building frozen config dataclasses from raw YAML data: type conversion, unknown-key
errors that name the key and the file, and `require` for the checks in __post_init__."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from edgekd.errors import ConfigError


def require_list(value, key: str) -> list:
    require(isinstance(value, list), f"distill.{key} must be a list")
    return value


def build_config(cls, raw: Any, prefix: str, source: str):
    """A config dataclass from a raw mapping: unknown keys and wrong types are errors that
    name the key (prefix + key) and the file (source)."""
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
        values[key] = convert_value(hints[key], value, f"{prefix}{key}", source)
    if "arch" in raw and "arch_args" in fields and "arch_args" not in raw:
        values["arch_args"] = {}  # the default arch's arguments do not fit another architecture
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {source})") from None


def convert_value(hint, value, key: str, source: str):
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value if value is not None else {}, key + ".", source)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return convert_value(args[0], value, key, source)
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


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
