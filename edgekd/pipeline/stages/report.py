"""TODO docstring (pipeline -> pipeline.stages.report)"""

from __future__ import annotations

import json

from edgekd.pipeline.context import Run


def stage_report(run: Run) -> dict:
    """report.json, report.md, results.csv and pareto.png."""
    from edgekd.pipeline.report import build_report, write_report

    bench_json = json.loads(run.path("state/bench.json").read_text())
    stages = {k: v for k, v in run.stages.items() if k != "report"}
    run.report = build_report(recipe=run.recipe.to_dict(), stages=stages, bench_json=bench_json)
    paths = write_report(run.report, run.run_dir)
    return {"files": sorted(p.name for p in paths.values())}
