"""Run results -> report.json, report.md, results.csv, pareto.png, curves.png and the terminal table.

report.json follows schema edgekd.report/1: the `models` entries are exactly the rows of
`edgekd bench --json` (schema edgekd.bench/1), so one parser reads both; `stages` holds
what each stage measured (training history, parity, calibration), `speedup` the ratios.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from edgekd.io.artifacts import atomic_write_text
from edgekd.pipeline.layout import SEARCH_PLOT
from edgekd.pipeline.plots import curves_plot, pareto_plot_models
from edgekd.pipeline.report_checks import (
    low_confidence_legend,
    p50_cell,
    speedup_cell,
    student_vs_teacher_flags,
)
from edgekd.pipeline.report_distill import (
    gain_section,
    labels_section,
    student_alone_row,
    table_cells,
)
from edgekd.pipeline.report_stages import stages_section
from edgekd.runtime.bench_output import format_count, format_size
from edgekd.search.report import search_plot, search_section

SCHEMA = "edgekd.report/1"


STAGE_LABELS = {"teacher": "teacher (fp32)", "student": "student (fp32)", "int8": "student (int8)"}


CSV_COLUMNS = ("name", "stage", "top1", "params", "macs", "file_bytes", "provider", "batch_size",
               "p50_ms", "p90_ms", "p99_ms", "throughput", "speedup_vs_teacher")


def speedups(models: list[dict]) -> dict[str, float | None]:
    """p50 speed-up of each model over the teacher (teacher p50 / model p50)."""
    teacher = next((m for m in models if m.get("stage") == "teacher"), None)
    out = {}
    for m in models:
        if teacher is None or not m["latency_ms"]["p50"]:
            out[m["name"]] = None
        else:
            out[m["name"]] = teacher["latency_ms"]["p50"] / m["latency_ms"]["p50"]
    return out


def build_report(*, recipe: dict, stages: dict, bench_json: dict) -> dict:
    models = bench_json["models"]
    return {
        "schema": SCHEMA,
        "edgekd_version": bench_json.get("edgekd_version"),
        "recipe": recipe,
        "machine": bench_json.get("machine"),
        "bench_config": bench_json.get("config"),
        "stages": stages,
        "models": models,
        "speedup_vs_teacher": speedups(models),
        # warnings a reader must not miss (e.g. a degenerate model), collected from the stages,
        # and a student bigger or slower than its teacher
        "flags": [f for record in stages.values() if isinstance(record, dict) for f in record.get("flags") or []]
        + student_vs_teacher_flags(models),
        # distill.baseline: the student trained alone (PyTorch top-1; not among the benched models)
        "student_alone": student_alone_row(stages),
    }


def summary_table(report: dict) -> str:
    """The one table `compress` prints: each model's accuracy, size, cost and speed; a '*'
    marks a p50 (and a speed-up from it) that `edgekd bench` would mark, reasons below."""
    header = ["model", "top-1 %", "params", "MACs", "file", "p50 ms (b=1)", "speed-up"]
    rows = [header]
    for m in report["models"]:
        speed = report["speedup_vs_teacher"].get(m["name"])
        rows.append([
            STAGE_LABELS.get(m.get("stage"), m["name"]),
            "-" if m["top1"] is None else f"{m['top1']:.2f}",
            format_count(m["params"]),
            format_count(m["macs"]),
            format_size(m["file_bytes"]),
            p50_cell(m),
            speedup_cell(m, speed, report["models"]),
        ])
        if m.get("stage") == "student" and report.get("student_alone"):
            rows.append([*table_cells(report["student_alone"]), "-", "-", "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += low_confidence_legend(report["models"], label=lambda m: STAGE_LABELS.get(m.get("stage"), m["name"]))
    return "\n".join(lines)


def markdown(report: dict, figures: dict[str, Path] | None = None) -> str:
    """report.md; `figures` ({"pareto": path, "curves": path}) are the figures written beside it."""
    machine = report.get("machine") or {}
    bench_cfg = report.get("bench_config") or {}
    lines = [
        f"# edgekd run: {report['recipe']['name']}",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"onnxruntime {machine.get('onnxruntime', '?')}, int8 CPU features: "
        f"{', '.join(machine.get('int8_cpu_flags') or []) or 'none found'}.",
        f"Latency: provider {bench_cfg.get('provider', '?')}, batch {bench_cfg.get('batch_size', '?')}, "
        f"{bench_cfg.get('warmup', '?')} warm-up runs, then at least {bench_cfg.get('runs', '?')} runs "
        f"and {bench_cfg.get('min_seconds', '?')} s. Top-1 on the test split (`eval.npz`).",
        "",
        *[f'<span style="color:red">**Warning: {f["message"]}**</span>\n' for f in report.get("flags") or []],
        "| model | top-1 % | params | MACs | file | p50 ms | p90 ms | p99 ms | speed-up | int8 ops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report["models"]:
        speed = report["speedup_vs_teacher"].get(m["name"])
        lat = m["latency_ms"]
        top1 = "-" if m["top1"] is None else f"{m['top1']:.2f}"
        lines.append(
            f"| {m['name']} | {top1} | {format_count(m['params'])} | "
            f"{format_count(m['macs'])} | {format_size(m['file_bytes'])} | {p50_cell(m)} | {lat['p90']:.3f} | "
            f"{lat['p99']:.3f} | {speedup_cell(m, speed, report['models'])} | "
            f"{'-' if m.get('int8_ops') is None else m['int8_ops']} |"
        )
        if m.get("stage") == "student" and report.get("student_alone"):
            lines.append("| " + " | ".join(table_cells(report["student_alone"])) + " | - | - | - | - | - | - |")
    legend = low_confidence_legend(report["models"])
    if legend:
        lines += ["", "\\* marks a latency, and a speed-up computed from it, that `edgekd bench` marks as low "
                      "confidence:", "", *[f"- {line.lstrip('* ')}" for line in legend]]
    for m in report["models"]:  # edgekd bench compares the int8 model with the fp32 one
        ref = m.get("reference")
        if ref:
            lines += ["", f"{m['name']} vs {Path(ref['path']).name}: argmax agreement {ref['argmax_match']:.2f}% "
                          f"on {ref['samples']} {ref['inputs']} inputs, max abs difference of the outputs "
                          f"{ref['max_abs_diff']:.4g}."]
    lines += figures_section(figures)
    lines += stages_section(report["stages"])
    lines += adaptation_section(report["stages"])
    lines += gain_section(report["stages"])
    lines += labels_section(report["stages"])
    lines += pruning_section(report["stages"].get("prune") or {})
    lines += scheme_section(report["stages"])
    lines += gates_section(report["stages"])
    lines += search_section(report["stages"])
    return "\n".join(lines) + "\n"


def adaptation_section(stages: dict) -> list[str]:
    """What edgekd changed in torchvision/timm models for the data's size (small-input stems,
    batch-norm momentum): their accuracy depends on it, so the report says it."""
    lines = [f"- {name} ({record.get('arch')}): {'; '.join(record['adapted'])}"
             for name, record in stages.items() if isinstance(record, dict) and record.get("adapted")]
    return ["", "## Models adapted to the input", "", *lines] if lines else []


def pruning_section(prune: dict) -> list[str]:
    """report.md lines for the prune stage: parameters, MACs and channels per layer before and
    after, the KD fine-tuning history, and each latency-targeted step's measured p50."""
    if not prune.get("enabled"):
        return []
    before, after = prune["before"], prune["after"]
    lines = ["", "## Pruning", "",
             f"Parameters {format_count(before['params'])} -> {format_count(after['params'])}, MACs {format_count(before['macs'])} -> "
             f"{format_count(after['macs'])} ({before['macs'] / max(after['macs'], 1):.2f}x fewer), val top-1 after "
             f"fine-tuning {prune['val_top1']:.2f}%.", ""]
    latency = prune.get("latency")
    if latency:
        final = latency["final"]
        lines += [f"Latency target: {latency['target']} ({latency['format']} ONNX, timed against the unpruned model "
                  f"in one interleaved loop): {'met' if latency['met'] else 'NOT met'}. {latency['message']}.", "",
                  "| step | share removed | MACs | params | p50 ms | unpruned p50 ms | speed-up |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for st in latency["steps"]:
            lines.append(f"| {st['step']} | {st['removed']:.2f} | {format_count(st['macs'])} | {format_count(st['params'])} | "
                         f"{st['p50_ms']:.3f} | {st['reference_p50_ms']:.3f} | {st['speedup']:.2f}x |")
        lines += [f"| final (after fine-tuning) | | {format_count(final['macs'])} | {format_count(final['params'])} | "
                  f"{final['p50_ms']:.3f} | {final['reference_p50_ms']:.3f} | {final['speedup']:.2f}x |", ""]
    if prune.get("steps"):
        lines += ["| KD fine-tune after step | MACs | val top-1 % |", "|---:|---:|---:|",
                  *[f"| {h['step']} | {format_count(h['macs'])} | {h['val_top1']:.2f} |" for h in prune["steps"]], ""]
    lines += ["| layer | channels before | after |", "|---|---:|---:|",
              *[f"| {name} | {n} | {after['channels'].get(name, '-')} |" for name, n in before["channels"].items()]]
    return lines


def results_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for m in report["models"]:
        lat = m["latency_ms"]
        speed = report["speedup_vs_teacher"].get(m["name"])
        writer.writerow([m["name"], m.get("stage"), m["top1"], m["params"], m["macs"], m["file_bytes"],
                         m["provider"], m["batch_size"], lat["p50"], lat["p90"], lat["p99"],
                         m["throughput"], speed])
    alone = report.get("student_alone")
    if alone:
        writer.writerow([alone["name"], alone["stage"], alone["top1"], alone["params"], alone["macs"],
                         *[""] * (len(CSV_COLUMNS) - 5)])
    return buffer.getvalue()


def pareto_plot(report: dict, path: str | Path) -> Path | None:
    """Accuracy vs p50 latency of a run's models (report.json), the Pareto front joined.
    Returns None when matplotlib is not installed (it is optional on devices)."""
    return pareto_plot_models(report["models"], path, title=f"edgekd: {report['recipe']['name']}",
                              xlabel="p50 latency, batch 1 (ms)")


def figures_section(figures: dict[str, Path] | None) -> list[str]:
    """report.md links to the figures beside it, or why there are none."""
    if not figures:
        return ["", "No figures: they need matplotlib (pip install matplotlib) and results with a top-1."]
    captions = {"pareto": "Accuracy vs latency", "curves": "Training curves (val top-1 and train loss per epoch)"}
    return ["", "## Figures", "", *[f"![{captions.get(key, key)}]({Path(path).name})\n"
                                    for key, path in figures.items()]]


def write_report(report: dict, run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    figures = {}
    plot = pareto_plot(report, run_dir / "pareto.png")
    if plot is not None:
        figures["pareto"] = plot
    curves = curves_plot(report["stages"], run_dir / "curves.png", title=f"edgekd: {report['recipe']['name']}")
    if curves is not None:
        figures["curves"] = curves
    paths = {
        "json": atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n"),
        "markdown": atomic_write_text(run_dir / "report.md", markdown(report, figures)),
        "csv": atomic_write_text(run_dir / "results.csv", results_csv(report)),
        **figures,
    }
    if search_plot(report["stages"], run_dir) is not None:  # distill.arch auto: its candidates
        paths["search"] = run_dir / SEARCH_PLOT
    return paths


def scheme_section(stages: dict) -> list[str]:
    """report.md lines for a transfer-learning teacher and a non-offline distill scheme:
    the val top-1 of each phase, peer, generation, or of the student and its EMA."""
    lines = []
    teacher, distill = stages.get("teacher") or {}, stages.get("distill") or {}
    if "val_top1_head" in teacher:
        lines += ["", "## Transfer learning (teacher)", "",
                  f"Pretrained `{teacher['transfer']['pretrained']}`, new head `{teacher['transfer']['head']}`. "
                  f"Val top-1: {teacher['val_top1_pretrained_backbone']:.2f}% with the untrained head, "
                  f"{teacher['val_top1_head']:.2f}% after the head-only phase, {teacher['val_top1_finetune']:.2f}% "
                  f"after fine-tuning every layer (lr {teacher['finetune_lr']:g})."]
    scheme = distill.get("scheme")
    if scheme == "online":
        peers = ", ".join(f"peer {k}: {v:.2f}%" for k, v in enumerate(distill["peers_val_top1"]))
        lines += ["", "## Distillation scheme: online (mutual learning)", "",
                  f"Val top-1 {peers}; peer {distill['best_peer']} continues."]
    elif scheme == "born-again":
        gens = ", ".join(f"generation {g['generation']}: {g['val_top1']:.2f}%" for g in distill["generations"])
        lines += ["", "## Distillation scheme: born-again", "",
                  f"Val top-1 {gens}; generation {distill['best_generation']} continues."]
    elif scheme == "ema":
        lines += ["", "## Distillation scheme: EMA teacher", "",
                  f"Val top-1 student {distill['student_val_top1']:.2f}%, EMA (decay {distill['ema_decay']}) "
                  f"{distill['ema_val_top1']:.2f}%; the {distill['continues']} continues."]
    return lines


def _worst(per_batch) -> float | None:
    """The largest of {batch: difference} (NaN counts as the largest); None without any."""
    values = [v for v in (per_batch or {}).values() if isinstance(v, (int, float))]
    if not values:
        return None
    return max(values, key=lambda v: float("inf") if math.isnan(v) else v)


def gates_section(stages: dict) -> list[str]:
    """report.md lines for the gates: ONNX-vs-PyTorch parity of each exported model (max
    absolute and relative difference, and the tolerances where the export stage recorded
    them), and the accuracy budget of int8 with the resolution of the val split."""
    lines = []
    export, quantize = stages.get("export") or {}, stages.get("quantize") or {}
    parity = []
    for name in ("teacher", "student"):
        entry = export.get(name)
        if not isinstance(entry, dict) or _worst(entry.get("max_abs_diff")) is None:
            continue
        text = f"{name}: max |onnx - torch| {_worst(entry['max_abs_diff']):.3g}"
        if _worst(entry.get("max_rel_diff")) is not None:
            text += f", {_worst(entry['max_rel_diff']):.3g} of the outputs' magnitude"
        parity.append(text)
    if parity:
        tol = ""  # the tolerances, recorded per model or for the stage
        src = next((e for e in (export.get("student"), export.get("teacher"), export) if isinstance(e, dict)
                    and all(isinstance(e.get(k), (int, float)) for k in ("atol", "rtol"))), None)
        if src is not None:
            tol = f" (gate: |onnx - torch| <= {src['atol']:g} + {src['rtol']:g} x the row's largest |output|)"
        lines += ["", "## Gates", "", f"ONNX parity vs PyTorch{tol}: " + "; ".join(parity) + "."]
    fp32, int8 = quantize.get("val_top1_fp32"), quantize.get("val_top1_int8")
    if isinstance(fp32, (int, float)) and isinstance(int8, (int, float)):
        if not lines:
            lines += ["", "## Gates", ""]
        text = f"Accuracy budget: val top-1 fp32 ONNX {fp32:.2f}%, int8 {int8:.2f}% (drop {fp32 - int8:.2f} points)"
        budget = quantize.get("budget_resolution")
        if isinstance(budget, dict) and budget.get("text"):
            text += f"; {budget['text']}"
        elif quantize.get("max_drop") is not None:
            text += f"; quantize.max_drop {quantize['max_drop']}"
        lines += ["", text + "."]
    return lines
