"""Output formats of `edgekd bench`: terminal table, CSV, Markdown, and --compare.

Everything here works on the JSON model entries (BenchRow.to_dict(), schema
edgekd.bench/1) and imports only the standard library, so it runs on devices (no
torch, no numpy, no onnxruntime) and reads reports written on another machine.
"""

from __future__ import annotations

import csv
import io
import math

from edgekd.errors import ConfigError
from edgekd.runtime.ranking import ranking_lines

LOW_CONFIDENCE_MARK = "*"  # after p50 in the table: see edgekd.runtime.measure.low_confidence


def format_count(n: int | None) -> str:
    if n is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.2f}{suffix}"
    return str(n)


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def _as_dict(row) -> dict:
    return row if isinstance(row, dict) else row.to_dict()


def _align(lines: list, text_columns: int) -> str:
    """Columns padded to their widest cell; the first `text_columns` left-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        cells = [c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _threads(m: dict) -> str:
    t = m.get("threads")
    return "-" if t is None else ("default" if t == 0 else str(t))


def _has_reference(models: list) -> bool:
    return any(m.get("reference") for m in models)


def _reference_cells(m: dict) -> list:
    """'agree %' and 'max |diff|' against the reference model ('-' without one)."""
    ref = m.get("reference")
    if not ref:
        return ["-", "-"]
    return [f"{ref['argmax_match']:.2f}", f"{ref['max_abs_diff']:.3g}"]


def provider_nodes_text(m: dict) -> str:
    """'CPUExecutionProvider=12' style: nodes per provider, from the profiled run."""
    nodes = m.get("provider_nodes") or {}
    return "; ".join(f"{ep}={n}" for ep, n in nodes.items())


def failed(m: dict) -> bool:
    """A FailedRow's entry: a result ONNX Runtime could not produce on its provider."""
    return m.get("status") == "failed"


def _where(m: dict, models: list) -> str:
    """'model (batch 1, threads default)', with 'on PROVIDER' when several providers were benched."""
    on = f" on {m['provider']}" if len({x["provider"] for x in models}) > 1 else ""
    return f"{m['name']}{on} (batch {m['batch_size']}, threads {_threads(m)})"


def _legend(models: list) -> str:
    """Lines under a table: failed results with the provider's message, reference models,
    where another provider than the CPU one ran the nodes and which fell back, notes."""
    lines = []
    for m in models:
        where = _where(m, models)
        if failed(m):
            lines.append(f"{m['name']}: FAILED on {m['provider']}: {m['message']}")
            continue
        route = m.get("provider_route") or {}
        if route.get("kind") == "plugin":
            lines.append(f"{m['provider']}: plugin {route['package']} on {route['device']}")
        if (m.get("providers_used") or ["CPUExecutionProvider"])[0] != "CPUExecutionProvider" \
                and m.get("provider_nodes") and not m.get("fallback_nodes"):
            lines.append(f"{where}: nodes per provider {provider_nodes_text(m)}, none fell back")
        ref = m.get("reference")
        if ref:
            lines.append(f"{m['name']}: compared with {ref['path']} on {ref['samples']} {ref['inputs']} inputs")
        if m.get("fallback_nodes"):
            lines.append(f"{where}: {m['fallback_nodes']} of {sum(m['provider_nodes'].values())} nodes fell back "
                         f"to the CPU provider ({provider_nodes_text(m)})")
        lines += [f"{m['name']}: {note}" for note in m.get("notes") or []]
    return "\n".join(dict.fromkeys(lines))  # a sweep repeats a model's lines


def _failed_cells(m: dict, columns: int) -> list:
    """A failed result's table cells: its name, provider and settings, 'failed' for p50."""
    cells = [m["name"], "-", m["provider"], str(m["batch_size"]), _threads(m)] + ["-"] * (columns - 5)
    cells[9] = "failed"
    return cells


def format_table(rows: list, ranking: list | None = None, skipped: list | None = None) -> str:
    """The terminal table; a '*' after p50 marks a low-confidence result (reasons in
    the legend below the table and in the JSON's low_confidence). With a reference
    model: its argmax agreement and max abs difference; notes (why accuracy was not
    measured, nodes that fell back to the CPU, failed results) under the table; with
    several providers, the fastest per model (edgekd.runtime.ranking) and the providers
    --provider all skipped."""
    models = [_as_dict(r) for r in rows]
    with_ref = _has_reference(models)
    header = ["model", "stage", "provider", "batch", "threads", "top1 %", "params", "MACs", "size",
              "p50 ms", "p90 ms", "p99 ms", "img/s", "peak RSS"] + (["agree %", "max |diff|"] if with_ref else [])
    lines = [header]
    flagged = []
    for m in models:
        if failed(m):
            lines.append(_failed_cells(m, len(header)))
            continue
        lat = m["latency_ms"]
        low = m.get("low_confidence") or []
        if low:
            flagged.append(m)
        lines.append([
            m["name"], m.get("stage") or "-", m["provider"], str(m["batch_size"]), _threads(m),
            "-" if m.get("top1") is None else f"{m['top1']:.2f}",
            format_count(m.get("params")), format_count(m.get("macs")), format_size(m.get("file_bytes")),
            f"{lat['p50']:.3f}" + (LOW_CONFIDENCE_MARK if low else ""),
            f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{m['throughput']:.1f}",
            format_size(m.get("rss_peak_bytes")),
        ] + (_reference_cells(m) if with_ref else []))
    text = _align(lines, text_columns=3)
    for m in flagged:
        text += (f"\n{LOW_CONFIDENCE_MARK} {_where(m, models)}: "
                 f"low confidence: {'; '.join(m['low_confidence'])}")
    legend = _legend(models)
    text += "\n" + legend if legend else ""
    for line in ranking_lines(ranking or []) + [f"skipped {s}" for s in skipped or []]:
        text += "\n" + line
    return text


CSV_COLUMNS = ("name", "stage", "provider", "batch_size", "threads", "top1", "samples", "params", "macs",
               "file_bytes", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "runs",
               "throughput", "session_ms", "first_run_ms", "rss_before_bytes", "rss_peak_bytes",
               "rss_delta_bytes", "int8_ops", "qdq_nodes", "low_confidence", "warmup", "inter_threads",
               "provider_nodes", "fallback_nodes", "reference", "ref_argmax_match", "ref_max_abs_diff",
               "ref_samples", "ref_inputs", "input_source", "notes")


def to_csv(rows: list) -> str:
    """One line per result; low_confidence reasons and notes joined with '; ' (empty when
    none), provider_nodes as 'PROVIDER=n; ...', the reference's fields as ref_*."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for m in (_as_dict(r) for r in rows):
        if failed(m):  # settings and the provider's message; no measurements
            values = {**m, "notes": f"FAILED: {m['message']}"}
            writer.writerow(["" if values.get(c) is None else values.get(c) for c in CSV_COLUMNS])
            continue
        lat = m["latency_ms"]
        ref = m.get("reference") or {}
        values = {**m, **{f"{k}_ms": v for k, v in lat.items()}, "low_confidence": "; ".join(m.get("low_confidence") or []),
                  "provider_nodes": provider_nodes_text(m), "notes": "; ".join(m.get("notes") or []),
                  "reference": ref.get("path"), **{f"ref_{k}": v for k, v in ref.items() if k != "path"}}
        writer.writerow(["" if values.get(c) is None else values.get(c) for c in CSV_COLUMNS])
    return buffer.getvalue()


def to_markdown(rows: list, machine: dict | None = None, config: dict | None = None,
                ranking: list | None = None) -> str:
    machine, config = machine or {}, config or {}
    lines = ["# edgekd bench", ""]
    if machine:
        lines += [
            f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
            f"onnxruntime {machine.get('onnxruntime', '?')}, int8 CPU features: "
            f"{', '.join(machine.get('int8_cpu_flags') or []) or 'none found'}.",
        ]
    if config:
        warmup = f"{config.get('warmup', '?')} warm-up runs"
        if config.get("warmup_seconds"):
            warmup += f" and {config['warmup_seconds']} s"
        lines += [
            f"Latency: {warmup}, then at least {config.get('runs', '?')} runs "
            f"and {config.get('min_seconds', '?')} s per result.",
        ]
    models = [_as_dict(r) for r in rows]
    with_ref = _has_reference(models)
    lines += [
        "",
        "| model | provider | batch | threads | top-1 % | params | size | p50 ms | p90 ms | p99 ms | img/s "
        "| peak RSS | nodes per provider |" + (" agree % | max \\|diff\\| |" if with_ref else "") + " low confidence |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if with_ref else "") + "---|",
    ]
    for m in models:
        if failed(m):
            lines.append(f"| {m['name']} | {m['provider']} | {m['batch_size']} | {_threads(m)} | - | - | - | failed |"
                         + " - |" * (6 + 2 * with_ref))
            continue
        lat = m["latency_ms"]
        top1 = "-" if m.get("top1") is None else f"{m['top1']:.2f}"
        low = "; ".join(m.get("low_confidence") or []) or "-"
        ref = (" " + " | ".join(_reference_cells(m)) + " |") if with_ref else ""
        lines.append(
            f"| {m['name']} | {m['provider']} | {m['batch_size']} | {_threads(m)} | {top1} | "
            f"{format_count(m.get('params'))} | {format_size(m.get('file_bytes'))} | {lat['p50']:.3f} | "
            f"{lat['p90']:.3f} | {lat['p99']:.3f} | {m['throughput']:.1f} | "
            f"{format_size(m.get('rss_peak_bytes'))} | {provider_nodes_text(m) or '-'} |{ref} {low} |"
        )
    legend = _legend(models)
    if legend:
        lines += [""] + [f"- {line}" for line in legend.splitlines()]
    if ranking:
        lines += ["", "Providers compared:", ""] + [f"- {line}" for line in ranking_lines(ranking)]
    return "\n".join(lines) + "\n"


def _finite(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float
        return False


def _compare_entry_problem(m) -> str | None:
    """What is wrong with one `models` entry for compare(), or None."""
    if not isinstance(m, dict):
        return f"is {type(m).__name__}, not an object"
    if not isinstance(m.get("name"), str):
        return "has no 'name' string"
    for key in ("batch_size", "threads"):
        value = m.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"'{key}' must be a whole number or null"
    latency = m.get("latency_ms")
    if not isinstance(latency, dict) or not all(_finite(latency.get(p)) for p in ("p50", "p90", "p99")):
        return "needs 'latency_ms' with finite numbers p50, p90 and p99"
    for key in ("throughput", "top1"):
        if m.get(key) is not None and not _finite(m.get(key)):
            return f"'{key}' must be a finite number or null"
    return None


def check_compare_report(report, where: str) -> None:
    """ConfigError (exit 2, one line) unless `report` has what compare() reads: a `models`
    list of objects, each with a name, latency_ms p50/p90/p99, and optional whole-number
    batch_size/threads and numeric throughput/top1 (an edgekd bench or report JSON file)."""
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise ConfigError(f"'{where}' has no 'models' list; pass an edgekd bench or report JSON file")
    for i, m in enumerate(report["models"]):
        problem = _compare_entry_problem(m)
        if problem:
            raise ConfigError(f"'{where}': models[{i}] {problem}; pass an edgekd bench or report JSON file")


def _key(m: dict) -> tuple:
    return (m["name"], m.get("batch_size"), m.get("threads"))


def _ratio(b, a):
    return None if a in (None, 0) or b is None else b / a


def compare(a: dict, b: dict) -> list[dict]:
    """Results present in both reports (same name, batch size and threads), in A's order.
    Ratios are B / A: latency below 1 and throughput above 1 mean B is faster.
    top1_diff is B - A in percentage points (None when either has no accuracy)."""
    b_models = {_key(m): m for m in b.get("models", [])}
    out = []
    for ma in a.get("models", []):
        mb = b_models.get(_key(ma))
        if mb is None:
            continue
        row = {"name": ma["name"], "batch_size": ma.get("batch_size"), "threads": ma.get("threads")}
        for p in ("p50", "p90", "p99"):
            row[f"{p}_ratio"] = _ratio(mb["latency_ms"][p], ma["latency_ms"][p])
        row["throughput_ratio"] = _ratio(mb.get("throughput"), ma.get("throughput"))
        ta, tb = ma.get("top1"), mb.get("top1")
        row["top1_diff"] = None if ta is None or tb is None else tb - ta
        row["low_confidence"] = bool(ma.get("low_confidence") or mb.get("low_confidence"))
        out.append(row)
    return out


def format_compare(rows: list[dict], a_name: str = "A", b_name: str = "B") -> str:
    if not rows:
        return f"no results in common between {a_name} and {b_name} (same model name, batch size and threads)"

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    header = ["model", "batch", "threads", "p50 B/A", "p90 B/A", "p99 B/A", "img/s B/A", "top1 B-A"]
    lines = [header]
    for r in rows:
        lines.append([
            r["name"] + (LOW_CONFIDENCE_MARK if r["low_confidence"] else ""),
            fmt(r["batch_size"], "d"), _threads(r),
            fmt(r["p50_ratio"], ".3f"), fmt(r["p90_ratio"], ".3f"), fmt(r["p99_ratio"], ".3f"),
            fmt(r["throughput_ratio"], ".3f"), fmt(r["top1_diff"], "+.2f"),
        ])
    text = _align(lines, text_columns=1)
    text += f"\nA = {a_name}, B = {b_name}; latency ratio < 1 and img/s ratio > 1: B is faster."
    if any(r["low_confidence"] for r in rows):
        text += f"\n{LOW_CONFIDENCE_MARK} low confidence in A or B (see their low_confidence)"
    return text
