"""Latency tables: the int8 timings of a search's candidates (and of their fp32 models), written by `edgekd bench
CANDIDATES_DIR --latency-table` on the device and read by `distill.search.latency_table`;
and the candidates folder's manifest that `compress` writes. Torch-free.

A table is read only for the candidates, opset and input size it was made for: anything
else is refused with the reason (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.errors import ConfigError, first_line

SCHEMA = "edgekd.latency-table/1"
MANIFEST_SCHEMA = "edgekd.search-candidates/1"
MANIFEST = "candidates.json"
MAX_BYTES = 16 * 1024**2


def read_json(path, what: str, schema: str, hint: str) -> dict:
    """A JSON file of `schema`, or a one-line ConfigError saying what is wrong and `hint`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' {'is not a regular file' if path.exists() else 'does not exist'}; {hint}")
    if path.stat().st_size > MAX_BYTES:
        raise ConfigError(f"{what} '{path}' is larger than {MAX_BYTES >> 20} MiB; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{what} '{path}' cannot be read as JSON ({first_line(exc)[:80]}); {hint}") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{what} '{path}' is not a {schema} file (schema {found!r}); {hint}")
    return data


def shape_text(shape) -> str:
    return "x".join(str(v) for v in shape)


def load_table(path, *, ids: list[str], opset: int, input_shape) -> dict:
    """The table at `path`, checked against this run: its opset, its input shape (channels,
    height, width) and a timing for every candidate id. A ConfigError names what differs."""
    redo = "time this run's candidates folder with edgekd bench CANDIDATES_DIR --latency-table TABLE"
    table = read_json(path, "latency table", SCHEMA, redo)
    rows = table.get("candidates")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                             and _positive(r.get("int8_p50_ms")) for r in rows):
        raise ConfigError(f"latency table '{path}' has no valid candidates list (id, int8_p50_ms each); {redo}")
    if table.get("opset") != opset:
        raise ConfigError(f"latency table '{path}' was made for opset {table.get('opset')}, this run exports "
                          f"opset {opset}; {redo}")
    shape = [int(v) for v in input_shape]
    if table.get("input_shape") != shape:
        theirs = shape_text(table.get("input_shape") or ["?"])
        raise ConfigError(f"latency table '{path}' was made for {theirs} inputs, this run's are {shape_text(shape)} "
                          f"(channels x height x width); {redo}")
    timed = {r["id"] for r in rows}
    missing = [i for i in ids if i not in timed]
    if missing:
        raise ConfigError(f"latency table '{path}' was made for other candidates: {len(missing)} of this run's "
                          f"{len(ids)} are not in it (e.g. {missing[0]}); {redo}")
    return table


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def rows_by_id(table: dict) -> dict:
    return {row["id"]: row for row in table["candidates"]}


def load_manifest(folder) -> dict:
    """A candidates folder's manifest, with every model file it names inside the folder."""
    folder = Path(folder)
    hint = "give the folder that edgekd compress wrote with distill.search.export_only: true"
    manifest = read_json(folder / MANIFEST, "candidates manifest", MANIFEST_SCHEMA, hint)
    entries = manifest.get("candidates")
    reference = manifest.get("reference")
    if not isinstance(entries, list) or not entries or not isinstance(reference, dict):
        raise ConfigError(f"candidates manifest '{folder / MANIFEST}' lists no candidates or no reference; {hint}")
    for entry in [reference, *entries]:
        name = entry.get("int8") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not (folder / name).is_file():
            raise ConfigError(f"candidates manifest '{folder / MANIFEST}' names a model file {name!r} that is not "
                              f"in the folder; {hint}")
        fp32 = entry.get("fp32")  # optional: timed beside the int8 model where the folder has it
        if fp32 is not None and (not isinstance(fp32, str) or Path(fp32).name != fp32):
            raise ConfigError(f"candidates manifest '{folder / MANIFEST}' names an fp32 model {fp32!r} outside the "
                              f"folder; {hint}")
    return manifest
