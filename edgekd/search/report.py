"""The student search in a run's report: the candidates table (report.md) and a plot of the
candidates' int8 p50 against their proxy val top-1 (search.png)."""

from __future__ import annotations

from pathlib import Path

from edgekd.pipeline.layout import SEARCH_PLOT


def search_section(stages: dict) -> list[str]:
    """report.md's lines on the search of distill.arch auto (none without it)."""
    from edgekd.search.select import candidates_table

    search = (stages.get("distill") or {}).get("search")
    if not search:
        return []
    return ["", "## Student search (distill.arch: auto)", "",
            f"Budget: {search['budget']}. Timings: {search['timings']}. {search['message']}.", "",
            candidates_table(search["candidates"])]


def search_plot(stages: dict, run_dir) -> Path | None:
    """search.png: int8 p50 vs proxy val top-1 of the candidates that had a proxy (None without
    a search, without matplotlib, or without a proxy)."""
    from edgekd.pipeline.plots import pareto_plot_models

    search = (stages.get("distill") or {}).get("search")
    if not search:
        return None
    models = [{"name": row["name"] + (" (chosen)" if row["chosen"] else ""), "latency_ms": {"p50": row["int8_p50_ms"]},
               "top1": row["proxy_val_top1"]} for row in search["candidates"]]
    return pareto_plot_models(models, Path(run_dir) / SEARCH_PLOT, title="edgekd: student search",
                              xlabel="int8 p50 latency on the target (ms)")
