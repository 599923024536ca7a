"""Tests for edgekd.report on hand-made bench rows: speed-ups, Pareto front, CSV, tables, files."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from edgekd.pipeline.plots import pareto_front
from edgekd.pipeline.report import (
    CSV_COLUMNS,
    SCHEMA,
    STAGE_LABELS,
    build_report,
    markdown,
    results_csv,
    speedups,
    summary_table,
    write_report,
)


def row(name, stage, p50, top1, params=1000, macs=50_000, file_bytes=4096, int8_ops=None):
    return {
        "name": name, "stage": stage, "top1": top1, "params": params, "macs": macs, "file_bytes": file_bytes,
        "provider": "cpu", "batch_size": 1, "latency_ms": {"p50": p50, "p90": p50 * 1.5, "p99": p50 * 2},
        "throughput": 1000.0 / p50 if p50 else 0.0, "int8_ops": int8_ops,
    }


MODELS = [
    row("teacher", "teacher", 4.0, 91.5, params=1_250_000, macs=40_000_000, file_bytes=5 * 1024 * 1024),
    row("student", "student", 2.0, 89.25, params=23_733, macs=1_500_000, file_bytes=2048),
    row("student.int8", "int8", 0.5, 88.0, params=23_733, macs=1_500_000, file_bytes=1024, int8_ops=3),
]


@pytest.fixture
def report():
    bench_json = {
        "edgekd_version": "0.1.0",
        "machine": {"cpu": "Test CPU", "cores": 2, "onnxruntime": "1.32", "int8_cpu_flags": ["avx2"]},
        "config": {"provider": "cpu", "batch_size": 1, "warmup": 1, "runs": 5, "min_seconds": 0.0},
        "models": [dict(m) for m in MODELS],
    }
    stages = {
        "teacher": {"seconds": 12.5, "val_top1": 91.0, "epochs": [{"epoch": 1}]},
        "export": {"seconds": 0.25, "max_abs_diff": {"1": 1.5e-7, "7": 2.25e-7}},
    }
    return build_report(recipe={"name": "unit", "seed": 0}, stages=stages, bench_json=bench_json)


# -- speed-ups and the Pareto front ---------------------------------------------------------------


def test_speedups_by_hand():
    # teacher p50 / model p50: 4.0 / 4.0 = 1, 4.0 / 2.0 = 2, 4.0 / 0.5 = 8
    assert speedups(MODELS) == {"teacher": 1.0, "student": 2.0, "student.int8": 8.0}


def test_speedups_without_teacher_or_latency():
    assert speedups(MODELS[1:]) == {"student": None, "student.int8": None}
    zero = [MODELS[0], row("broken", "student", 0.0, 50.0)]
    assert speedups(zero) == {"teacher": 1.0, "broken": None}  # no division by a zero latency


@pytest.mark.parametrize(
    "points, front",
    [
        # (latency, accuracy, name). Sorted by latency: d(0.5, 70) a(1, 80) e(2, 95) b(2, 90) c(3, 85)
        # d: best so far 70; a: 80 > 70; e: 95 > 80; b: 90 < 95, beaten by e (same latency);
        # c: 85 < 95, slower and less accurate than e.
        ([(1.0, 80, "a"), (2.0, 90, "b"), (3.0, 85, "c"), (0.5, 70, "d"), (2.0, 95, "e")],
         ["d", "a", "e"]),
        # the fastest is also the most accurate: it beats everything
        ([(3.0, 70, "slow"), (1.0, 90, "fast"), (2.0, 80, "mid")], ["fast"]),
        # a strict trade-off: all on the front, sorted by latency
        ([(3.0, 90, "c"), (1.0, 70, "a"), (2.0, 80, "b")], ["a", "b", "c"]),
        # equal accuracy: only the faster one
        ([(2.0, 80, "slow"), (1.0, 80, "fast")], ["fast"]),
        ([], []),
    ],
)
def test_pareto_front_by_hand(points, front):
    assert [p[2] for p in pareto_front(points)] == front


# -- report, CSV and tables ----------------------------------------------------------------------------


def test_build_report_structure(report):
    assert report["schema"] == SCHEMA == "edgekd.report/1"
    assert report["edgekd_version"] == "0.1.0"
    assert report["recipe"]["name"] == "unit"
    assert report["bench_config"]["runs"] == 5
    assert [m["name"] for m in report["models"]] == ["teacher", "student", "student.int8"]
    assert report["speedup_vs_teacher"] == {"teacher": 1.0, "student": 2.0, "student.int8": 8.0}


def test_results_csv_header_and_rows(report):
    text = results_csv(report)
    lines = text.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert len(lines) == 1 + 3
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in rows] == ["teacher", "student", "student.int8"]
    int8 = rows[2]
    assert int8["stage"] == "int8" and float(int8["top1"]) == 88.0
    assert int(int8["params"]) == 23_733 and int(int8["file_bytes"]) == 1024
    # p90 = 1.5 * p50, p99 = 2 * p50 for the hand-made rows: 0.75 and 1.0
    assert float(int8["p50_ms"]) == 0.5 and float(int8["p90_ms"]) == 0.75 and float(int8["p99_ms"]) == 1.0
    assert float(int8["throughput"]) == 2000.0  # 1000 / 0.5
    assert float(int8["speedup_vs_teacher"]) == 8.0
    assert float(rows[0]["speedup_vs_teacher"]) == 1.0


def test_results_csv_leaves_unknown_speedup_empty():
    report = build_report(recipe={"name": "x"}, stages={}, bench_json={"models": [dict(MODELS[1])]})
    (only,) = csv.DictReader(io.StringIO(results_csv(report)))
    assert only["speedup_vs_teacher"] == ""


def test_summary_table(report):
    table = summary_table(report)
    lines = table.splitlines()
    assert len(lines) == 2 + 3  # header, rule, one line per model
    assert lines[0].split()[:3] == ["model", "top-1", "%"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    for label, line in zip(STAGE_LABELS.values(), lines[2:]):
        assert line.startswith(label)
    assert STAGE_LABELS == {"teacher": "teacher (fp32)", "student": "student (fp32)", "int8": "student (int8)"}
    teacher, student, int8 = lines[2:]
    # 1,250,000 params -> 1.25M; 40,000,000 MACs -> 40.00M; 5 MiB -> 5.00 MB; p50 4.0 -> 4.000; 4/4 -> 1.00x
    assert teacher.split()[2:] == ["91.50", "1.25M", "40.00M", "5.00", "MB", "4.000", "1.00x"]
    # 23,733 -> 23.73K; 1,500,000 -> 1.50M; 2048 B -> 2.0 KB; 4/2 -> 2.00x
    assert student.split()[2:] == ["89.25", "23.73K", "1.50M", "2.0", "KB", "2.000", "2.00x"]
    assert int8.split()[2:] == ["88.00", "23.73K", "1.50M", "1.0", "KB", "0.500", "8.00x"]
    assert len({len(line) for line in lines}) == 1  # columns are aligned


def test_summary_table_unknown_stage_and_missing_values():
    models = [row("other.onnx", None, 1.0, None, params=None, macs=None)]
    report = build_report(recipe={"name": "x"}, stages={}, bench_json={"models": models})
    line = summary_table(report).splitlines()[2]
    # the file name stands in for the label; no accuracy, params, MACs or speed-up: "-"
    assert line.split() == ["other.onnx", "-", "-", "-", "4.0", "KB", "1.000", "-"]


def test_markdown(report):
    text = markdown(report)
    assert text.startswith("# edgekd run: unit\n")
    assert "Test CPU, 2 cores, onnxruntime 1.32, int8 CPU features: avx2." in text
    assert "| student.int8 | 88.00 | 23.73K | 1.50M | 1.0 KB | 0.500 | 0.750 | 1.000 | 8.00x | 3 |" in text
    assert "| teacher | 91.50 | 1.25M | 40.00M | 5.00 MB | 4.000 | 6.000 | 8.000 | 1.00x | - |" in text
    # stages: seconds with one decimal, then each stage's fields as rows with units (issue 28: no dict dumps)
    assert "| teacher | 12.5 |" in text and "| export | 0.2 |" in text
    assert "| val_top1 | 91.00 % |" in text
    assert "| max_abs_diff.1 | 1.5e-07 |" in text and "| max_abs_diff.7 | 2.25e-07 |" in text


# -- files -----------------------------------------------------------------------------------------------


def test_write_report_files(tmp_path, report):
    paths = write_report(report, tmp_path / "run")
    run = tmp_path / "run"
    assert paths["json"] == run / "report.json" and paths["markdown"] == run / "report.md"
    assert paths["csv"] == run / "results.csv"
    assert json.loads(paths["json"].read_text()) == report
    assert paths["markdown"].read_text() == markdown(report, {k: v for k, v in paths.items() if k == "pareto"})
    assert paths["csv"].read_text() == results_csv(report)
    expected = {"report.json", "report.md", "results.csv"}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pareto" not in paths
    else:
        expected.add("pareto.png")
        assert paths["pareto"] == run / "pareto.png"
        assert paths["pareto"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in run.iterdir()} == expected  # and no temporary files


def test_write_report_without_matplotlib(tmp_path, report, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    paths = write_report(report, tmp_path)
    assert set(paths) == {"json", "markdown", "csv"}
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "results.csv"}


def test_no_plot_without_accuracies(tmp_path):
    models = [row("a", "teacher", 1.0, None), row("b", "student", 0.5, None)]
    report = build_report(recipe={"name": "x"}, stages={}, bench_json={"models": models})
    paths = write_report(report, tmp_path)
    assert "pareto" not in paths and not (tmp_path / "pareto.png").exists()


def test_a_degenerate_model_is_flagged_in_the_json_and_in_red_in_markdown():
    from edgekd.pipeline.report import build_report, markdown

    flag = {"model": "student", "kind": "degenerate", "message": "student looks degenerate: predicts class 3 for all"}
    bench = {"models": [], "config": {}, "machine": {}}
    report = build_report(recipe={"name": "r"}, stages={"distill": {"flags": [flag]}, "teacher": {"flags": []}},
                          bench_json=bench)
    assert report["flags"] == [flag]
    text = markdown(report)
    assert 'color:red' in text and "predicts class 3 for all" in text
