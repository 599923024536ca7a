"""Issue 28, reports that show: the noisy-latency mark of `edgekd bench` in report.md and in the
compress table, the student-bigger/slower warning, and the Pareto panels per batch size."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt  # optional for users, installed with edgekd[test]
import numpy as np
import pytest

from edgekd.pipeline.plots import pareto_figure
from edgekd.pipeline.report import build_report, markdown, summary_table
from edgekd.runtime.bench_output import LOW_CONFIDENCE_MARK
from edgekd.runtime.measure import latency_stats, low_confidence


def row(name, stage, p50, p99=None, top1=88.0, params=20_000, provider="cpu", batch_size=1, timings=None):
    """A bench row (schema edgekd.bench/1); from real timings when given, as bench writes it."""
    m = {"name": name, "stage": stage, "top1": top1, "params": params, "macs": 50_000, "file_bytes": 4096,
         "provider": provider, "batch_size": batch_size, "threads": 1, "throughput": 1000.0 / p50, "int8_ops": None,
         "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p99 if p99 is not None else p50 * 1.2}}
    if timings is not None:
        m["latency_ms"] = {k: v for k, v in latency_stats(timings).items() if k in ("p50", "p90", "p99")}
        m["low_confidence"] = low_confidence(timings)
    return m


def stalled_timings() -> np.ndarray:
    """1,000 timed runs near 0.511 ms with 2% stalls of ~26.6 ms: the issue's p50 and p99."""
    rng = np.random.default_rng(0)
    t = 0.511 + rng.normal(0, 0.002, 1000)
    t[rng.choice(1000, 20, replace=False)] = 26.6
    return t


def report_of(models, stages=None):
    return build_report(recipe={"name": "unit"}, stages=stages or {},
                        bench_json={"models": models, "config": {"provider": "cpu", "batch_size": 1}})


@pytest.fixture
def noisy_report():
    quiet = np.full(1000, 38.1) + np.random.default_rng(1).normal(0, 0.05, 1000)
    return report_of([row("teacher", "teacher", 38.1, timings=quiet, params=77_754),
                      row("model.fp32", "student", 1.0, timings=np.full(1000, 1.0), params=53_362),
                      row("model.int8", "int8", 0.511, timings=stalled_timings(), params=53_362)])


def test_the_issues_timings_are_low_confidence_for_bench():
    reasons = low_confidence(stalled_timings())
    assert any(r.startswith("long tail") for r in reasons), reasons


def test_compress_table_marks_the_noisy_p50_and_its_speedup(noisy_report):
    table = summary_table(noisy_report).splitlines()
    int8 = next(line for line in table if line.startswith("student (int8)"))
    assert f"0.511{LOW_CONFIDENCE_MARK}" in int8 and f"x{LOW_CONFIDENCE_MARK}" in int8  # 74.5x*
    for label in ("teacher (fp32)", "student (fp32)"):  # quiet results: no mark
        line = next(line for line in table if line.startswith(label))
        assert LOW_CONFIDENCE_MARK not in line
    legend = [line for line in table if line.startswith(f"{LOW_CONFIDENCE_MARK} ")]
    assert len(legend) == 1 and "student (int8)" in legend[0] and "long tail" in legend[0]


def test_report_md_marks_the_noisy_p50_and_its_speedup(noisy_report):
    text = markdown(noisy_report)
    int8 = next(line for line in text.splitlines() if line.startswith("| model.int8 |"))
    cells = [c.strip() for c in int8.strip("|").split("|")]
    assert cells[5] == f"0.511{LOW_CONFIDENCE_MARK}" and cells[8].endswith(f"x{LOW_CONFIDENCE_MARK}")
    assert LOW_CONFIDENCE_MARK not in next(line for line in text.splitlines() if line.startswith("| teacher |"))
    legend = next(line for line in text.splitlines() if line.startswith("- model.int8: low confidence: "))
    assert "long tail: p99 is 52.1x p50" in legend


def test_a_speedup_over_a_noisy_teacher_is_marked_too():
    """An entry written without low_confidence (an older report) is judged on its percentiles."""
    report = report_of([row("teacher", "teacher", 4.0, p99=40.0), row("model.fp32", "student", 2.0)])
    student = next(line for line in summary_table(report).splitlines() if line.startswith("student (fp32)"))
    assert student.split()[-1] == f"2.00x{LOW_CONFIDENCE_MARK}" and f"2.000{LOW_CONFIDENCE_MARK}" not in student


def test_a_student_bigger_and_slower_than_its_teacher_is_warned_in_the_log_and_the_report(caplog):
    models = [row("teacher", "teacher", 0.2, params=78_000), row("model.fp32", "student", 0.9, params=700_000),
              row("model.int8", "int8", 0.8, params=700_000)]
    with caplog.at_level(logging.WARNING, logger="edgekd"):
        report = report_of(models)
    kinds = [f["kind"] for f in report["flags"]]
    assert kinds == ["student_bigger", "student_slower"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("more parameters than its teacher (700.00K vs 78.00K)" in m for m in logged)
    assert any("not faster than its teacher on cpu: p50 0.800 ms vs 0.200 ms" in m for m in logged)
    text = markdown(report)
    assert text.count('<span style="color:red">**Warning: the') == 2


def test_no_warning_for_a_smaller_faster_student_or_another_provider(caplog):
    small = report_of([row("teacher", "teacher", 4.0, params=78_000), row("model.int8", "int8", 0.5, params=20_000)])
    other = report_of([row("teacher", "teacher", 0.2), row("model.int8", "int8", 0.8, provider="openvino")])
    assert small["flags"] == [] and other["flags"] == []  # latencies on two providers are not compared


def test_pareto_plot_has_one_panel_per_batch_size():
    models = [row(name, stage, p50 * b, top1=top1, batch_size=b)
              for b in (1, 8) for name, stage, p50, top1 in
              (("teacher", "teacher", 4.0, 91.0), ("model.fp32", "student", 1.0, 89.0),
               ("model.int8", "int8", 0.5, 88.5))]
    fig = pareto_figure(models, title="sweep")
    axes = fig.axes
    assert len(axes) == 2 and [ax.get_title() for ax in axes] == ["sweep: batch 1", "sweep: batch 8"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, batch in zip(axes, (1, 8)):
        assert ax.get_xlim()[0] == 0  # latency axis from 0, never below
        assert len(ax.collections) == 3  # the three models of this batch size only
        assert ax.collections[0].get_offsets()[0][0] == pytest.approx(4.0 * batch)
        frame = ax.get_window_extent(renderer)
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert sorted(t.get_text() for t in ax.texts) == ["model.fp32", "model.int8", "teacher"]
        for box in boxes:  # every label inside its panel, none over another
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_one_batch_size_one_panel():
    fig = pareto_figure([row("a", "teacher", 1.0), row("b", "student", 0.5)], title="t")
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "t"
    plt.close(fig)
