"""The ONNX Runtime knobs `edgekd bench` passes on: provider options (`--provider-option`,
bench.provider_options), session config entries (`--session-config`, bench.session_config,
SessionOptions.add_session_config_entry) and the graph optimization level
(`--graph-optimization`, bench.graph_optimization).

Checked here, before any model is loaded: a bad entry is one line and exit 2. ONNX Runtime
itself decides what a key means; a value it refuses fails that model's session (a failed
result when several are compared, see edgekd.runtime.bench).
"""

from __future__ import annotations

from edgekd.errors import ConfigError

# --graph-optimization NAME -> onnxruntime.GraphOptimizationLevel member
GRAPH_OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                      "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

MAX_ENTRIES = 64  # per option map

MAX_KEY_LENGTH = 128

MAX_VALUE_LENGTH = 1024


def _shown(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def check_entry(key, value, where: str) -> None:
    """A key of printable characters without spaces or '=', and a string value on one line."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() \
            or any(c.isspace() or c == "=" for c in key):
        raise ConfigError(f"{where}: a key must be 1 to {MAX_KEY_LENGTH} printable characters without spaces "
                          f"or '=', got {_shown(str(key))}")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: the value of '{key}' must be a string (quote it, e.g. '1'), "
                          f"got {type(value).__name__}")
    if len(value) > MAX_VALUE_LENGTH or not value.isprintable():
        raise ConfigError(f"{where}: the value of '{key}' must be at most {MAX_VALUE_LENGTH} printable "
                          f"characters on one line, got {_shown(value)}")


def check_option_map(value, where: str, *, provider_prefix: bool = False) -> None:
    """A mapping of string keys to string values, at most MAX_ENTRIES. provider_prefix:
    keys may be 'PROVIDER:KEY' (an option for that provider only), PROVIDER a known name."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of keys to string values, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise ConfigError(f"{where}: at most {MAX_ENTRIES} entries, got {len(value)}")
    for key, item in value.items():
        if provider_prefix and isinstance(key, str) and ":" in key:
            from edgekd.runtime.providers import resolve_provider

            provider, _, key = key.partition(":")
            try:
                resolve_provider(provider)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        check_entry(key, item, where)


def parse_pairs(values, flag: str) -> dict:
    """('k=v', ...) from a repeatable flag -> {k: v}; one line and exit 2 for anything else
    (no '=', an empty or repeated key)."""
    pairs = {}
    if len(values) > MAX_ENTRIES:
        raise ConfigError(f"{flag}: at most {MAX_ENTRIES} entries, got {len(values)}")
    for text in values:
        key, sep, value = str(text).partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {_shown(str(text))}")
        if key in pairs:
            raise ConfigError(f"{flag}: '{key}' is given twice")
        pairs[key] = value
    return pairs


def options_for(provider: str, provider_options: dict) -> dict:
    """The entries of bench.provider_options that apply to `provider`: the plain ones and
    those prefixed with its name ('openvino:KEY', or the ONNX Runtime name); a prefixed
    entry wins over a plain one."""
    from edgekd.runtime.providers import resolve_provider

    ep = resolve_provider(provider)
    plain = {k: v for k, v in provider_options.items() if ":" not in k}
    for key, value in provider_options.items():
        prefix, sep, name = key.partition(":")
        if sep and resolve_provider(prefix) == ep:
            plain[name] = value
    return plain


def check_graph_optimization(value, where: str = "bench.graph_optimization") -> None:
    if value not in GRAPH_OPTIMIZATION:
        raise ConfigError(f"{where} must be one of {', '.join(GRAPH_OPTIMIZATION)}, got {str(value)[:40]!r}")
