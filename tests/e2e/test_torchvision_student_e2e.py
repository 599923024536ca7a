"""A torchvision student through `compress` on 28x28 data: adapted to the small input (stride-1
stem, no early max-pool), batch-norm statistics recomputed after each epoch, and the report
says what was adapted."""

from __future__ import annotations

from edgekd.api import compress


def test_torchvision_student_is_adapted_and_the_report_says_so(tmp_path):
    recipe = {
        "name": "tv-student",
        "data": {"name": "fashion-mnist-subset", "limit_train": 256, "limit_test": 64, "calib_size": 32},
        "teacher": {"arch": "tinycnn", "arch_args": {"width": 8}, "epochs": 1, "batch_size": 64},
        "distill": {"arch": "torchvision:shufflenet_v2_x0_5", "epochs": 1, "batch_size": 64},
        "prune": {"enabled": False},
        "quantize": {"max_drop": None},
        "bench": {"warmup": 1, "runs": 3, "min_seconds": 0.0},
    }
    report = compress(recipe, tmp_path / "run")
    distill = report["stages"]["distill"]
    assert distill["adapted"][:2] == ["conv1.0: stride 2 -> 1", "maxpool: MaxPool2d removed"]
    assert distill["compute"]["recompute_batch_norm"] is True
    assert "adapted" not in report["stages"]["teacher"]  # edgekd's own model: nothing to adapt
    assert report["stages"]["teacher"]["compute"]["recompute_batch_norm"] is False
    text = (tmp_path / "run" / "report.md").read_text()
    assert "## Models adapted to the input" in text
    assert "- distill (torchvision:shufflenet_v2_x0_5): conv1.0: stride 2 -> 1; maxpool: MaxPool2d removed" in text
    assert {m["stage"] for m in report["models"]} >= {"student", "int8"}
