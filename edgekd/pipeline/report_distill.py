"""The report's distillation parts: the "student alone" row of distill.baseline with
distillation's gain, and how many labeled and unlabeled images each training stage saw.

The student alone is not exported or benched (it is the same architecture as the student,
so it runs as fast): its row holds its test top-1 in PyTorch (fp32) and its size, and lives
beside the bench rows (report.json `student_alone`), never among them (`models` stays the
rows of `edgekd bench --json`).
"""

from __future__ import annotations

from edgekd.runtime.bench_output import format_count

STUDENT_ALONE = "student-alone"
LABEL_STAGES = (("teacher", "teacher"), ("distill", "distill"), ("prune", "prune fine-tuning"))


def student_alone_row(stages: dict) -> dict | None:
    """report.json's `student_alone`: the baseline's name, test top-1 and size (None without one)."""
    distill = stages.get("distill") or {}
    alone = distill.get("baseline")
    if not isinstance(alone, dict):
        return None
    return {"name": STUDENT_ALONE, "stage": STUDENT_ALONE, "top1": alone.get("test_top1"),
            "val_top1": alone.get("val_top1"), "params": alone.get("params"), "macs": alone.get("macs"),
            "weights": alone.get("weights"), "measured": "PyTorch fp32 on the test split (not exported or benched)",
            "gain_points": distill.get("gain_points"), "gain_split": distill.get("gain_split")}


def table_cells(row: dict) -> tuple[str, str, str, str]:
    """(label, top-1, params, MACs) of the student-alone row for the tables."""
    top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
    return "student alone (fp32)", top1, format_count(row["params"]), format_count(row["macs"])


def gain_section(stages: dict) -> list[str]:
    """report.md lines saying what distillation gained over the student alone."""
    distill = stages.get("distill") or {}
    alone = distill.get("baseline")
    if not isinstance(alone, dict):
        return []
    text = (f"The distilled student (as the distill stage left it, before pruning and int8) reaches "
            f"{distill['test_top1']:.2f}% test top-1, the same student trained alone {alone['test_top1']:.2f}%: "
            f"**{distill['gain_points']:+.2f} points** on the {distill['gain_split']} split "
            f"({distill['val_gain_points']:+.2f} on val). Both from the same initial weights, with the same "
            f"schedule, augmentation and {alone['steps']:,} optimizer steps; the student alone learns from "
            f"cross-entropy on the {alone['images']['labeled']:,} labeled images only. Top-1 in PyTorch, fp32.")
    return ["", "## Distillation gain", "", text]


def labels_section(stages: dict) -> list[str]:
    """report.md lines: the labeled and unlabeled images of each training stage, when some
    images had no label (data.labels_per_class, data.unlabeled)."""
    rows = [(label, stages[name]["images"]) for name, label in LABEL_STAGES
            if isinstance((stages.get(name) or {}).get("images"), dict)]
    if not any(images.get("unlabeled") for _, images in rows):
        return []
    alone = (stages.get("distill") or {}).get("baseline")
    if isinstance(alone, dict):
        rows.insert(2, ("student alone (baseline)", alone["images"]))
    taught = ((stages.get("teacher") or {}).get("images") or {}).get("unlabeled")
    teacher = ("The teacher learns from the labeled images" if not taught else
               "The teacher learns from every train image, the unlabeled ones through its own confident "
               "predictions (teacher.semi_supervised)")
    text = (f"{teacher}; the student from all of them, the unlabeled ones through the teacher's outputs alone (KD); "
            "val keeps its labels.")
    return ["", "## Labels", "", text, "",
            "| stage | labeled images | unlabeled images |", "|---|---:|---:|",
            *[f"| {label} | {images['labeled']:,} | {images['unlabeled']:,} |" for label, images in rows]]
