"""Every file name inside a run directory, in one place: constants only."""

from __future__ import annotations

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
# distill.arch auto (edgekd.search): the candidates as exported (a device times them from here), the
# search's record there (an interrupted distill stage resumes with the same student), its plot
SEARCH_CANDIDATES = "search-candidates"
SEARCH_RECORD = "search-candidates/search.json"
SEARCH_PLOT = "search.png"
RUNS_FOLDER = "runs"  # where runs go without --out: runs/NAME, runs/NAME-2, ...
# distill.extra_teachers[i - 1] (multi-teacher KD): the name with .format(i)
EXTRA_TEACHER_WEIGHTS = "teacher.extra{}.safetensors"
EXTRA_TEACHER_CHECKPOINT = "state/teacher.extra{}.ckpt"
# per training run (teacher, distill, teacher-head, distill.gen2, ...): one row per epoch, and
# TensorBoard event files when tensorboard is installed (edgekd.pipeline.epoch_log)
METRICS_CSV = "metrics/{}.csv"
TENSORBOARD_DIR = "tb/{}"
