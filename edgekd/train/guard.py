"""The degenerate-model guard: a model that predicts one class for every validation image,
or whose top-1 is within a few points of chance, has learned nothing usable, whatever its
ONNX parity and int8 agreement say (a constant model agrees with itself perfectly). Such a
model is flagged in the stage's log, in report.json's `flags` and in red in report.md."""

from __future__ import annotations

import numpy as np

CHANCE_MARGIN_POINTS = 2.0  # top-1 within this many points of 100 / classes counts as chance


def degenerate_reasons(predictions, labels, num_classes: int) -> list[str]:
    """Why a model's validation predictions look degenerate (empty list: they do not).

    predictions: predicted class per image (argmax of the logits); labels: the true ones."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if len(predictions) == 0 or num_classes < 2:
        return []
    reasons = []
    classes = np.unique(predictions)
    if len(classes) == 1:
        reasons.append(f"predicts class {int(classes[0])} for all {len(predictions)} validation images")
    top1 = 100.0 * float((predictions == labels).mean())
    chance = 100.0 / num_classes
    if top1 <= chance + CHANCE_MARGIN_POINTS:
        reasons.append(f"validation top-1 {top1:.2f}% is within {CHANCE_MARGIN_POINTS:g} points of chance "
                       f"({chance:.2f}% for {num_classes} classes)")
    return reasons


def flag(model_name: str, reasons: list[str]) -> dict | None:
    """The report's flag entry for a model, or None when there is nothing to flag."""
    if not reasons:
        return None
    return {"model": model_name, "kind": "degenerate", "message": f"{model_name} looks degenerate: "
            + "; ".join(reasons) + " (too small an input for the architecture, too short a schedule, or a bad lr)"}
