"""The degenerate-model guard (edgekd.train.guard), on hand-made predictions."""

import numpy as np

from edgekd.train.guard import degenerate_reasons, flag


def test_one_class_for_every_image_is_flagged():
    labels = np.arange(100) % 10
    reasons = degenerate_reasons(np.full(100, 3), labels, 10)
    assert any("class 3 for all 100" in r for r in reasons)
    assert any("10.00% is within 2 points of chance (10.00%" in r for r in reasons)
    entry = flag("student", reasons)
    assert entry["kind"] == "degenerate" and entry["message"].startswith("student looks degenerate")


def test_near_chance_is_flagged_and_a_learning_model_is_not():
    labels = np.arange(200) % 4
    near = labels.copy()
    near[:] = (labels + 1) % 4
    near[:54] = labels[:54]  # 27% correct, chance 25%: within 2 points
    assert len(degenerate_reasons(near, labels, 4)) == 1
    good = labels.copy()
    good[:20] = (labels[:20] + 1) % 4  # 90% correct
    assert degenerate_reasons(good, labels, 4) == [] and flag("teacher", []) is None


def test_empty_or_single_class_tasks_are_not_flagged():
    assert degenerate_reasons([], [], 10) == []
    assert degenerate_reasons([0, 0], [0, 0], 1) == []
