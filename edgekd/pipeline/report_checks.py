"""What the report must not let a reader miss about the benched models: latencies that
`edgekd bench` would mark as low confidence (the same reasons and the same '*'), and a
student that is bigger or slower than its teacher."""

from __future__ import annotations

import logging

from edgekd.runtime.bench_output import LOW_CONFIDENCE_MARK, format_count
from edgekd.runtime.measure import tail_reasons

logger = logging.getLogger("edgekd")


def low_confidence_reasons(m: dict) -> list[str]:
    """Why not to trust a model entry's latencies: the bench row's own low_confidence
    (edgekd.runtime.measure.low_confidence), or for an entry written without it, what the
    percentiles alone tell (a p99 far above the p50)."""
    if "low_confidence" in m:
        return list(m.get("low_confidence") or [])
    return tail_reasons(m["latency_ms"]) if m.get("latency_ms") else []


def p50_cell(m: dict) -> str:
    """The p50 in ms, with bench's mark when the entry is low confidence."""
    return f"{m['latency_ms']['p50']:.3f}" + (LOW_CONFIDENCE_MARK if low_confidence_reasons(m) else "")


def teacher_entry(models: list[dict]) -> dict | None:
    return next((m for m in models if m.get("stage") == "teacher"), None)


def speedup_cell(m: dict, speed: float | None, models: list[dict]) -> str:
    """'2.00x', marked when its own p50 or the teacher's is low confidence (the ratio of a
    doubtful p50 is as doubtful)."""
    if speed is None:
        return "-"
    teacher = teacher_entry(models)
    doubtful = low_confidence_reasons(m) or (teacher is not None and low_confidence_reasons(teacher))
    return f"{speed:.2f}x" + (LOW_CONFIDENCE_MARK if doubtful else "")


def low_confidence_legend(models: list[dict], label=lambda m: m["name"]) -> list[str]:
    """One line per low-confidence model: the mark, its label and the reasons, as under
    `edgekd bench`'s table."""
    return [f"{LOW_CONFIDENCE_MARK} {label(m)}: low confidence: {'; '.join(reasons)}"
            for m in models if (reasons := low_confidence_reasons(m))]


def student_vs_teacher_flags(models: list[dict]) -> list[dict]:
    """Report flags (report.json `flags`, red in report.md, logged as warnings) when the
    student has more parameters than its teacher, or when its int8 model's p50 is not below
    the teacher's on the same provider and batch size: distillation then bought nothing."""
    teacher = teacher_entry(models)
    if teacher is None:
        return []
    flags = []
    student = next((m for m in models if m.get("stage") == "student"), None)
    if student is not None and (student.get("params") or 0) > (teacher.get("params") or 0) > 0:
        flags.append({"model": student["name"], "kind": "student_bigger", "message": (
            f"the student has more parameters than its teacher ({format_count(student['params'])} vs "
            f"{format_count(teacher['params'])}): pick a smaller distill.arch or arch_args")})
    for int8 in (m for m in models if m.get("stage") == "int8"):
        same_setting = all(int8.get(k) == teacher.get(k) for k in ("provider", "batch_size", "threads"))
        if not same_setting or not int8.get("latency_ms") or not teacher.get("latency_ms"):
            continue
        mine, theirs = int8["latency_ms"]["p50"], teacher["latency_ms"]["p50"]
        if mine >= theirs > 0:
            flags.append({"model": int8["name"], "kind": "student_slower", "message": (
                f"the int8 student is not faster than its teacher on {int8.get('provider', '?')}: p50 {mine:.3f} ms "
                f"vs {theirs:.3f} ms ({theirs / mine:.2f}x): pick a smaller distill.arch or check quantize")})
    for entry in flags:
        logger.warning(f"[report] warning: {entry['message']}")
    return flags
