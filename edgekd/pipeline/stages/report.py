"""The report stage: report.json, report.md, results.csv and pareto.png from the stages'
records and the bench stage's results."""

from __future__ import annotations

import json

from edgekd.pipeline.context import Context, StageResult
from edgekd.pipeline.layout import BENCH_JSON
from edgekd.pipeline.stage_inputs import ReportInputs


def run(ctx: Context, cfg: dict, inputs: ReportInputs) -> StageResult:
    """cfg: the whole resolved recipe as plain data (the report repeats it); inputs: `stages`,
    the records of the stages before."""
    from edgekd.pipeline.report import build_report, write_report

    bench_json = json.loads(ctx.path(BENCH_JSON).read_text())
    report = build_report(recipe=cfg, stages=inputs.stages, bench_json=bench_json)
    paths = write_report(report, ctx.run_dir)
    return StageResult({"files": sorted(p.name for p in paths.values())}, {"report": report})
