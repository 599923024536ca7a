"""Which provider to deploy a model on, when `edgekd bench` compared several
(`--provider cpu,openvino`, `--provider all`): per model (and batch size, threads), the
fastest provider by p50, and the fastest whose top-1 stays within a tolerance of the
reference provider's (the CPU provider when it was benched, else the first one listed).

Works on the JSON report's entries (BenchRow.to_dict(), FailedRow.to_dict()) and imports
only the standard library, like edgekd.runtime.bench_output.
"""

from __future__ import annotations

import math

from edgekd.errors import ConfigError

DEFAULT_TOLERANCE = 0.5  # top-1 points below the reference provider's

MAX_TOLERANCE = 100.0


def check_tolerance(value) -> float:
    """--accuracy-tolerance: a finite number of top-1 points from 0 to 100 (exit 2 otherwise)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and 0 <= number <= MAX_TOLERANCE):
        raise ConfigError(f"--accuracy-tolerance must be top-1 points from 0 to {MAX_TOLERANCE:g}, "
                          f"got {str(value)[:40]!r}")
    return number


def _key(m: dict) -> tuple:
    return m["path"], m["batch_size"], m["threads"]


def _is_cpu(m: dict) -> bool:
    return (m.get("providers_used") or [None])[0] == "CPUExecutionProvider" or m["provider"] == "cpu"


def _choice(m: dict | None) -> dict | None:
    if m is None:
        return None
    return {"provider": m["provider"], "p50_ms": m["latency_ms"]["p50"], "top1": m.get("top1")}


def rank_providers(models: list, failed: list, tolerance: float = DEFAULT_TOLERANCE) -> list:
    """One entry per model (path, batch size, threads) benched on two providers or more:
    {model, path, batch_size, threads, providers, failed (providers that could not run
    it), fastest, reference {provider, top1}, tolerance_points, fastest_within_tolerance,
    note}. A choice is {provider, p50_ms, top1}; fastest_within_tolerance is None, with the
    reason in note, when top-1 was not measured."""
    groups: dict = {}
    for m in [*models, *failed]:
        groups.setdefault(_key(m), []).append(m)
    out = []
    for (path, batch, threads), rows in groups.items():
        measured = [m for m in rows if m.get("status") != "failed"]
        providers = list(dict.fromkeys(m["provider"] for m in rows))
        if len(providers) < 2:
            continue
        entry = {"model": rows[0]["name"], "path": path, "batch_size": batch, "threads": threads,
                 "providers": providers, "failed": [m["provider"] for m in rows if m.get("status") == "failed"],
                 "fastest": None, "reference": None, "tolerance_points": tolerance,
                 "fastest_within_tolerance": None, "note": None}
        if not measured:
            entry["note"] = "no provider could run it"
            out.append(entry)
            continue
        by_speed = sorted(measured, key=lambda m: m["latency_ms"]["p50"])
        entry["fastest"] = _choice(by_speed[0])
        reference = next((m for m in measured if _is_cpu(m)), measured[0])
        entry["reference"] = {"provider": reference["provider"], "top1": reference.get("top1")}
        if reference.get("top1") is None:
            entry["note"] = "top-1 not measured (pass --data): no accuracy check"
        else:
            keeps = [m for m in by_speed if m.get("top1") is not None
                     and m["top1"] >= reference["top1"] - tolerance - 1e-9]
            entry["fastest_within_tolerance"] = _choice(keeps[0] if keeps else None)
        out.append(entry)
    return out


def ranking_lines(ranking: list) -> list:
    """Lines under the table: the fastest provider per model, and the fastest that keeps
    top-1 within the tolerance."""
    lines = []
    for e in ranking:
        where = f"{e['model']} (batch {e['batch_size']})"
        if e["fastest"] is None:
            lines.append(f"{where}: {e['note']}")
            continue
        fastest = e["fastest"]
        text = f"{where}: fastest {fastest['provider']} (p50 {fastest['p50_ms']:.3f} ms)"
        ref = e["reference"]
        keep = e["fastest_within_tolerance"]
        if ref["top1"] is None:
            text += f"; {e['note']}"
        elif keep is None:
            text += (f"; none keeps top-1 within {e['tolerance_points']:g} points of {ref['provider']}'s "
                     f"{ref['top1']:.2f}%")
        else:
            text += (f"; fastest within {e['tolerance_points']:g} top-1 points of {ref['provider']} "
                     f"({ref['top1']:.2f}%): {keep['provider']} ({keep['top1']:.2f}%, p50 {keep['p50_ms']:.3f} ms)")
        if e["failed"]:
            text += f"; failed on {', '.join(e['failed'])}"
        lines.append(text)
    return lines
