"""Every file name inside a run directory, in one place."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import ConfigError

STAGES = ("data", "teacher", "distill", "prune", "export", "quantize", "bench", "report")

RECIPE_FILE = "recipe.yaml"  # the resolved recipe: `edgekd compress RUN/recipe.yaml` repeats the run
TEACHER_WEIGHTS = "teacher.safetensors"
STUDENT_WEIGHTS = "student.safetensors"
PRUNED_WEIGHTS = "pruned.safetensors"
PRUNED_SHAPES = "pruned.shapes.json"  # layer shapes as plain data: no pickled modules
TEACHER_ONNX = "teacher.fp32.onnx"
STUDENT_ONNX = "model.fp32.onnx"
INT8_ONNX = "model.int8.onnx"
EVAL_SET = "eval.npz"  # the test split, uint8, for benching on a device
BENCH_JSON = "state/bench.json"  # the bench stage's results, read by the report stage
QUANT_BUDGET_JSON = "state/quantize-budget.json"  # the accuracy-budget search, kept when it fails
CHECKPOINTS = {"teacher": "state/teacher.ckpt", "distill": "state/distill.ckpt"}  # per-epoch training state


def extra_teacher_file(i: int) -> str:
    """Weights of distill.extra_teachers[i - 1] (multi-teacher KD)."""
    return f"teacher.extra{i}.safetensors"


def extra_teacher_checkpoint(i: int) -> str:
    return f"state/teacher.extra{i}.ckpt"


def new_run_dir(name: str, out_dir: str | None, force: bool) -> Path:
    """Never overwrite a run silently: an explicit out_dir (--out) that exists needs force (--force);
    the default picks the first free runs/NAME, runs/NAME-2, ..."""
    if out_dir is not None:
        path = Path(out_dir)
        if path.exists() and any(path.iterdir()) and not force:
            raise ConfigError(
                f"run directory '{path}' already exists; use --resume {path} to continue it, "
                "--force to replace its artifacts, or another --out"
            )
        return path
    base = Path("runs") / name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{name}-{n}")
    return path
