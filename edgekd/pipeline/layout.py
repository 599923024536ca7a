"""Every file name inside a run directory, in one place."""

from __future__ import annotations

from edgekd.errors import ConfigError

STAGES = ("data", "teacher", "distill", "prune", "export", "quantize", "bench", "report")

RECIPE_FILE = "recipe.yaml"  # the resolved recipe: `edgekd compress RUN/recipe.yaml` repeats the run
TEACHER_WEIGHTS = "teacher.safetensors"
STUDENT_WEIGHTS = "student.safetensors"
STUDENT_ALONE_WEIGHTS = "student-alone.safetensors"  # distill.baseline: the student trained without the teacher
PRUNED_WEIGHTS = "pruned.safetensors"
PRUNED_SHAPES = "pruned.shapes.json"  # layer shapes as plain data: no pickled modules
TEACHER_ONNX = "teacher.fp32.onnx"
STUDENT_ONNX = "model.fp32.onnx"
INT8_ONNX = "model.int8.onnx"
EVAL_SET = "eval.npz"  # the test split, uint8, for benching on a device
BENCH_JSON = "state/bench.json"  # the bench stage's results, read by the report stage
QUANT_BUDGET_JSON = "state/quantize-budget.json"  # the accuracy-budget search, kept when it fails
DATA_FINGERPRINT = "state/data-fingerprint.json.gz"  # the data stage's file list and array hashes (--resume)
CHECKPOINTS = {"teacher": "state/teacher.ckpt", "distill": "state/distill.ckpt"}  # per-epoch training state
BASELINE_CHECKPOINT = "state/distill.baseline.ckpt"  # removed with the distill stage's (chain._checkpoint_files)
LOCK_FILE = "state/run.lock"  # held (flock) while a run uses the directory; names the holder
RUNS_FOLDER = "runs"  # where runs go without --out: runs/NAME, runs/NAME-2, ...


def extra_teacher_file(i: int) -> str:
    """Weights of distill.extra_teachers[i - 1] (multi-teacher KD)."""
    return f"teacher.extra{i}.safetensors"


def extra_teacher_checkpoint(i: int) -> str:
    return f"state/teacher.extra{i}.ckpt"


def check_run_name(name: str) -> None:
    """A run name is one folder name under runs/: never '.', '..', a path or a control character."""
    bad = (not isinstance(name, str) or name.strip() in ("", ".", "..") or any(sep in name for sep in ("/", "\\"))
           or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8", "replace")) > 200)
    if bad:
        shown = repr(name)[:60]
        raise ConfigError(f"run name {shown} cannot be a folder name under {RUNS_FOLDER}/ (no '.', '..', '/', "
                          "control characters, at most 200 bytes); set --name or give --out")
