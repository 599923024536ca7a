"""The report's distillation parts (edgekd.pipeline.report_distill) on hand-made records: the
student-alone row in the terminal table, report.md, results.csv and report.json (beside the
bench rows, not among them), the gain, and the labeled / unlabeled images per stage."""

from __future__ import annotations

import csv
import io

from edgekd.pipeline.report import build_report, markdown, results_csv, summary_table


def row(name, stage, top1):
    return {"name": name, "stage": stage, "top1": top1, "params": 1000, "macs": 50_000, "file_bytes": 4096,
            "provider": "cpu", "batch_size": 1, "latency_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
            "throughput": 1000.0, "int8_ops": None}


def report(unlabeled: int = 0):
    baseline = {"arch": "tinycnn", "params": 1000, "macs": 50_000, "val_top1": 80.0, "test_top1": 79.5,
                "steps": 470, "images": {"labeled": 600, "unlabeled": 0}, "images_per_epoch": 600 + unlabeled,
                "weights": "student-alone.safetensors", "epochs": [{"epoch": 1}]}
    stages = {
        "teacher": {"seconds": 1.0, "images": {"labeled": 600, "unlabeled": 0}},
        "distill": {"seconds": 2.0, "val_top1": 84.0, "test_top1": 83.25, "baseline": baseline, "gain_points": 3.75,
                    "gain_split": "test", "val_gain_points": 4.0, "images": {"labeled": 600, "unlabeled": unlabeled}},
        "prune": {"enabled": False, "seconds": 0.0},
    }
    bench_json = {"machine": {}, "config": {}, "models": [row("teacher.fp32", "teacher", 90.0),
                                                          row("model.fp32", "student", 83.3),
                                                          row("model.int8", "int8", 83.0)]}
    return build_report(recipe={"name": "unit"}, stages=stages, bench_json=bench_json)


def test_the_student_alone_is_a_row_beside_the_bench_rows():
    built = report()
    assert [m["stage"] for m in built["models"]] == ["teacher", "student", "int8"]
    alone = built["student_alone"]
    assert alone["top1"] == 79.5 and alone["gain_points"] == 3.75 and alone["gain_split"] == "test"
    lines = summary_table(built).splitlines()
    assert lines[3].startswith("student (fp32)") and lines[4].startswith("student alone (fp32)")
    assert "79.50" in lines[4]
    rows = list(csv.DictReader(io.StringIO(results_csv(built))))
    assert rows[-1]["name"] == "student-alone" and float(rows[-1]["top1"]) == 79.5 and rows[-1]["p50_ms"] == ""


def test_report_md_has_the_row_the_gain_and_no_labels_table_with_full_labels():
    text = markdown(report())
    assert "| student alone (fp32) | 79.50 |" in text
    assert "## Distillation gain" in text and "**+3.75 points** on the test split (+4.00 on val)" in text
    assert "470 optimizer steps" in text
    assert "## Labels" not in text
    assert "baseline=" not in text  # its details are in the row and the gain, not the stage's details column


def test_report_md_states_the_labeled_and_unlabeled_images_of_each_stage():
    text = markdown(report(unlabeled=59_400))
    assert "## Labels" in text
    assert "| teacher | 600 | 0 |" in text
    assert "| distill | 600 | 59,400 |" in text
    assert "| student alone (baseline) | 600 | 0 |" in text


def test_no_baseline_no_row():
    built = report()
    built["stages"]["distill"].pop("baseline")
    built = build_report(recipe=built["recipe"], stages=built["stages"],
                         bench_json={"machine": {}, "config": {}, "models": built["models"]})
    assert built["student_alone"] is None
    assert "student alone" not in summary_table(built) and "Distillation gain" not in markdown(built)
