"""The bench stage: latency and test accuracy of every ONNX model of the run on the configured
provider (edgekd.runtime, the same code as `edgekd bench`)."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.io.artifacts import atomic_write_text
from edgekd.pipeline.context import Context, StageResult
from edgekd.pipeline.layout import BENCH_JSON, INT8_ONNX, STUDENT_ONNX
from edgekd.pipeline.stage_inputs import BenchInputs
from edgekd.runtime.config import BenchConfig


def run(ctx: Context, cfg: BenchConfig, inputs: BenchInputs) -> StageResult:
    """inputs: none; the models are the run directory's ONNX files."""
    from edgekd.runtime.bench import bench_run_dir, to_json

    rows = bench_run_dir(ctx.run_dir, cfg, progress=ctx.progress)
    atomic_write_text(ctx.path(BENCH_JSON), json.dumps(to_json(rows, cfg=cfg), indent=2))
    warnings = int8_speed_warnings(rows)
    for line in warnings:
        ctx.log(f"[bench] warning: {line}")
    return StageResult({"models": [r.name for r in rows], "provider": cfg.provider, "warnings": warnings})


def int8_speed_warnings(rows) -> list[str]:
    """A warning when the int8 model's median latency is not below the fp32 student's."""
    by_name = {Path(r.path).name: r for r in rows}
    fp32, int8 = by_name.get(STUDENT_ONNX), by_name.get(INT8_ONNX)
    if fp32 is None or int8 is None:
        return []
    f, i = fp32.latency_ms["p50"], int8.latency_ms["p50"]
    if i < f:
        return []
    return [f"{INT8_ONNX} is not faster than {STUDENT_ONNX} on {int8.provider}: p50 {i:.3f} ms vs {f:.3f} ms "
            f"({int8.int8_ops if int8.int8_ops is not None else '?'} int8 kernels); check quantize.target and "
            f"activation_type for this CPU (S8S8 QDQ convolutions can be slower than fp32 on x86)"]
