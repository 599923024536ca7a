"""Issue 28, reports that show, on a real run: the default `edgekd compress` (the built-in
recipe on part of the embedded Fashion-MNIST subset, one epoch per training stage and a
short bench to stay quick)
writes a report.md without any Python dict or list dump, with the training curves and the
Pareto figure linked, and marks the latencies `edgekd bench` would mark, in report.md and
in the terminal table."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.runtime.bench_output import LOW_CONFIDENCE_MARK

PNG = b"\x89PNG\r\n\x1a\n"

# what str() of a dict or a list of dicts looks like: {'a': 1}, [{'a': 1}], {1: 2.0}, 'key': value
DICT_REPR = re.compile(r"\{'|\[\{|': |\{\d+: |\{\"")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """(run directory, terminal output) of one default compress run, shared by the module."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("readable") / "run"
    quick = ["teacher.epochs=1", "distill.epochs=1", "data.limit_train=2000", "bench.runs=50", "bench.min_seconds=0"]
    result = CliRunner().invoke(main, ["compress", "--out", str(out), "--no-progress",
                                       *[arg for setting in quick for arg in ("--set", setting)]])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_report_md_has_no_dict_dump(default_run):
    run, _ = default_run
    text = (run / "report.md").read_text()
    dumps = [line for line in text.splitlines() if DICT_REPR.search(line)]
    assert dumps == []
    # the stages' details are rows with units, the per-epoch history a table of its own
    assert "| compute.device | cpu |" in text and "| val_top1 |" in text and " % |" in text
    assert "| epoch | loss | train_top1 (%) | val_top1 (%) | seconds (s) |" in text


def test_the_curves_figure_is_written_and_linked(default_run):
    run, _ = default_run
    assert (run / "curves.png").read_bytes()[:8] == PNG
    assert (run / "pareto.png").read_bytes()[:8] == PNG
    text = (run / "report.md").read_text()
    assert "](curves.png)" in text and "](pareto.png)" in text


def test_noisy_latencies_are_marked_where_bench_marks_them(default_run):
    """Timings on a shared machine may or may not be noisy: whichever they are, a p50 is
    marked in report.md and in the terminal table exactly when its bench row is low confidence."""
    run, stdout = default_run
    report = json.loads((run / "report.json").read_text())
    md_rows = {line.split("|")[1].strip(): line.split("|") for line in (run / "report.md").read_text().splitlines()
               if line.startswith("| ") and line.count("|") == 11}
    labels = {"teacher": "teacher (fp32)", "student": "student (fp32)", "int8": "student (int8)"}
    table = {label: line for line in stdout.splitlines() for label in labels.values() if line.startswith(label)}
    for m in report["models"]:
        low = bool(m["low_confidence"])
        p50 = f"{m['latency_ms']['p50']:.3f}"
        assert md_rows[m["name"]][6].strip() == p50 + (LOW_CONFIDENCE_MARK if low else "")
        assert (p50 + LOW_CONFIDENCE_MARK in table[labels[m["stage"]]]) == low
        assert (f"{m['name']}: low confidence: " in (run / "report.md").read_text()) == low
