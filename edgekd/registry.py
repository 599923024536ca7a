"""Registries: the named things a user can add to without editing edgekd.

There is one registry per extension point, each in the module of its concern:

    edgekd.data.formats.FORMATS          dataset formats             data.name
    edgekd.models.zoo.ARCHITECTURES      model architectures         teacher.arch, distill.arch
    edgekd.distill.terms.TERMS           distillation loss terms     distill.terms[].kind
    edgekd.distill.scheme_registry.SCHEMES  distillation schemes     distill.scheme
    edgekd.distill.responses.RESPONSES   response losses             distill.response
    edgekd.prune.importance.IMPORTANCES  channel importance          prune.importance
    edgekd.quant.calibration.CALIBRATORS int8 calibration methods    quantize.calibration
    edgekd.runtime.providers.PROVIDERS   ONNX Runtime providers      bench.provider, --provider

A user's module registers with the decorator and is named in the recipe's `plugins:` list
(or imported before calling the Python API); recipe validation, help texts and errors read
the registry, so a registered name is valid everywhere at once (`edgekd list` shows them all):

    from edgekd.prune.importance import IMPORTANCES

    @IMPORTANCES.register("my-l1")
    def my_l1(model): ...
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from edgekd.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> implementations, in registration order; `kind` names them in errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Register `entry` under `name`; without `entry`, a decorator that registers what it decorates."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")

        def add(item: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not item:
                raise ValueError(f"{self.kind} '{name}' is already registered; pass replace=True to replace it")
            self._entries[name] = item
            return item

        return add(entry) if entry is not None else add

    def get(self, name: str) -> T:
        """The entry named `name`; an unknown name is a ConfigError that lists the known ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} '{name}'; available: {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def unregister(self, name: str) -> None:
        """Remove `name` (for tests that register a toy and must leave the registry as it was)."""
        self._entries.pop(name, None)


def import_plugins(modules: list, source: str) -> None:
    """Import the recipe's `plugins` (module names): their registrations run on import.
    A plugin is code, like `arch: module:function`: name only modules you trust."""
    import importlib
    import sys

    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"plugins in {source} must be a list of module names")
    if "" not in sys.path and "." not in sys.path:
        sys.path.append(".")  # modules next to where edgekd runs, as `arch: mod:fn` finds them
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugin module '{name}' (in {source}) cannot be imported: {exc}") from None


