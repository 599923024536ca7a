"""TODO docstring (run -> pipeline.layout)"""

from __future__ import annotations

STAGES = ("data", "teacher", "distill", "prune", "export", "quantize", "bench", "report")


# Artifact names inside a run directory
RECIPE_FILE = "recipe.yaml"


TEACHER_WEIGHTS = "teacher.safetensors"


STUDENT_WEIGHTS = "student.safetensors"


PRUNED_WEIGHTS = "pruned.safetensors"


PRUNED_SHAPES = "pruned.shapes.json"  # layer shapes as plain data: no pickled modules


TEACHER_ONNX = "teacher.fp32.onnx"


STUDENT_ONNX = "model.fp32.onnx"


INT8_ONNX = "model.int8.onnx"


EVAL_SET = "eval.npz"


CHECKPOINTS = {"teacher": "state/teacher.ckpt", "distill": "state/distill.ckpt"}  # per-epoch training state
