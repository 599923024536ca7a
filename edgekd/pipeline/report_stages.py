"""report.md's Stages section: what each stage recorded, as readable rows.

Each stage gets a table of `field | value` rows: nested records are flattened into dotted
names (compute.threads.count), values get their unit from the field's name (seconds, %,
img/s, bytes, parameter counts), lists of values are joined, and lists of records (the
per-epoch history, thread changes) get a small table of their own. Never a Python repr.
"""

from __future__ import annotations

import math

from edgekd.runtime.bench_output import format_count, format_size

# shown by sections of their own in report.md (or as red warnings), not among the stage's rows
SHOWN_ELSEWHERE = {"flags", "adapted", "seconds"}
STAGE_SHOWN_ELSEWHERE = {"prune": {"before", "after", "steps", "latency"}, "distill": {"baseline", "search"}}

COUNT_FIELDS = {"params", "macs", "calib_samples", "labeled", "unlabeled", "train", "val", "test", "calib", "steps"}


def stages_section(stages: dict) -> list[str]:
    """The `## Stages` lines: an overview of the stages' durations, then one table per stage."""
    lines = ["", "## Stages", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {_number(record.get('seconds', 0), 1)} |"
              for name, record in stages.items() if isinstance(record, dict)]
    for name, record in stages.items():
        if not isinstance(record, dict):
            continue
        skip = SHOWN_ELSEWHERE | STAGE_SHOWN_ELSEWHERE.get(name, set())
        rows, tables = _flatten({k: v for k, v in record.items() if k not in skip})
        if not rows and not tables:
            continue
        lines += ["", f"### {name}", ""]
        if rows:
            lines += ["| field | value |", "|---|---|", *[f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]]
        for title, records in tables:
            lines += ["", f"{title}:", "", *record_table(records)]
    return lines


def record_table(records: list[dict]) -> list[str]:
    """A Markdown table of records (e.g. the per-epoch history): one column per field, in the
    order they first appear; nested values flattened."""
    flat = [dict(_flatten(r, units=False)[0]) for r in records]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    return ["| " + " | ".join(_cell(_header(c)) for c in columns) + " |",
            "|" + "---:|" * len(columns),
            *["| " + " | ".join(_cell(r.get(c, "-")) for c in columns) + " |" for r in flat]]


def _header(field: str) -> str:
    unit = _unit(field)
    return field + (f" ({unit})" if unit else "")


def _flatten(record: dict, prefix: str = "", units: bool = True) -> tuple[list[tuple[str, str]], list[tuple[str, list[dict]]]]:
    """(rows of (dotted name, text), tables of (dotted name, records)) of a nested record;
    without units for the cells of a table whose header holds them."""
    rows, tables = [], []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if not value:
                rows.append((name, "none"))
                continue
            sub_rows, sub_tables = _flatten(value, name + ".", units)
            rows += sub_rows
            tables += sub_tables
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
            tables.append((name, list(value)))
        else:
            rows.append((name, value_text(name, value, units)))
    return rows, tables


def value_text(field: str, value, units: bool = True) -> str:
    """A value as a reader wants it: with the unit its field's name implies."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(field, v, units) for v in value) if value else "none"
    last = field.rsplit(".", 1)[-1]
    if isinstance(value, int) and (last in COUNT_FIELDS or last.endswith(("_params", "_macs"))):
        return format_count(value) if value >= 100_000 else f"{value:,}"
    if isinstance(value, (int, float)) and last.endswith("_bytes"):
        return format_size(value)
    if isinstance(value, (int, float)):
        unit = _unit(field)
        text = _number(value, 2 if unit in ("%", "s", "points") else None)
        return f"{text} {unit}" if unit and units else text
    return str(value)


def _unit(field: str) -> str:
    last = field.rsplit(".", 1)[-1]
    if last == "seconds" or last.endswith("_seconds"):
        return "s"
    if last in ("images_per_second", "img_per_s") or field.split(".")[-2:-1] == ["img_per_s"]:
        return "img/s"
    if "top1" in last or last.endswith("_pct"):
        return "%"
    if last.endswith("_ms"):
        return "ms"
    if last.endswith("_points"):
        return "points"
    return ""


def _number(value, decimals: int | None) -> str:
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    return f"{value:.{decimals}f}" if decimals is not None else f"{value:.4g}"


def _cell(value) -> str:
    """Text safe in a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")
