"""The student search of `distill.arch: auto` (issue 27): candidates of the edgenet family
(edgekd.search.space) are built, exported and quantized with the real calibration images as
the deployed model will be (prune.latency.export_deployable), timed on the target side by
side with the teacher's int8 model and their own fp32 model (edgekd.search.timing) or read
from a latency table that the device wrote; those that meet the budget (and gain
min_int8_speedup from int8, where asked) and are not dominated (slower with no more
parameters) get a short distillation proxy and are ranked by val top-1.

A budget that no candidate meets is refused before any training; one that every candidate
meets by far widens the space (wider and deeper, space.MAX_LEVEL times at most)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.errors import ConfigError, EdgekdError
from edgekd.search.config import SearchConfig
from edgekd.search.space import (
    MAX_LEVEL,
    budget_model,
    candidate_id,
    count_in_words,
    describe,
    family_space,
    is_budget_model,
)
from edgekd.search.table import MANIFEST, MANIFEST_SCHEMA, load_table, rows_by_id, shape_text
from edgekd.search.timing import latency_table

REFERENCE = "reference"  # the teacher's int8 model in a candidates folder
TABLE_FILE = "latency-table.json"  # the timings made here, next to the candidates


class CandidatesExported(EdgekdError):
    """distill.search.export_only: the candidates folder is written; the run stops here
    (exit 0) with what to do on the device and how to go on."""

    exit_code = 0


@dataclass
class SearchResult:
    winner: dict  # {arch, arch_args}
    rows: list = field(default_factory=list)  # one per candidate: the candidates table
    budget: str = ""
    timings: str = ""  # where the latencies came from
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"winner": self.winner, "budget": self.budget, "timings": self.timings, "message": self.message,
                "seconds": round(self.seconds, 3), "candidates": self.rows}


@dataclass(frozen=True)
class CandidateBuild:
    """How every candidate is built and exported, as the deployed model will be: the data's
    shape (`spec`), the calibration images of int8, the opset, the quantize settings, and the
    seed of the candidates' initial weights."""

    spec: object
    calib_images: np.ndarray
    opset: int
    quant_cfg: object = None
    seed: int = 0


def export_candidates(candidates: list[dict], teacher, folder: Path, build: CandidateBuild, *, export_cfg=None,
                      done: dict | None = None, log: Callable = lambda line: None) -> dict:
    """Each candidate (and the teacher, the reference) exported to `folder` as fp32 and int8
    ONNX; the manifest (candidates.json) that `edgekd bench --latency-table` reads. `done`:
    the manifest of candidates this search exported already (the space before widening)."""
    import torch

    from edgekd.models.cost import count_macs, count_params
    from edgekd.onnx_export import ExportConfig
    from edgekd.pipeline.context import build_arch
    from edgekd.prune.latency import export_deployable

    spec, opset = build.spec, build.opset
    shape = (spec.channels, spec.height, spec.width)
    kept = _kept_manifest(candidates, folder, shape, opset)
    if kept is not None:
        log(f"[search] the {len(candidates)} candidates in {folder} were exported by this run already: reused")
        return kept
    export_cfg = export_cfg or ExportConfig(check_batch_sizes=[1], opset=opset)
    folder.mkdir(parents=True, exist_ok=True)

    def deploy(model, name):
        return export_deployable(model, folder / name, input_shape=shape, calib_images=build.calib_images,
                                 quant_cfg=build.quant_cfg, export_cfg=export_cfg)

    exported = {e["id"]: e for e in (done or {}).get("candidates", [])}
    if not exported:
        deploy(teacher, REFERENCE)
    entries = []
    for candidate in candidates:
        cid = candidate_id(candidate["arch"], candidate["arch_args"], shape, opset)
        if cid in exported:
            entries.append(exported[cid])
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(build.seed)
            model = build_arch(spec, candidate["arch"], candidate["arch_args"])
        fp32, int8 = deploy(model, cid)
        entries.append({"id": cid, **candidate, "name": describe(candidate), "params": count_params(model),
                        "macs": count_macs(model, shape), "fp32": fp32.name, "int8": int8.name})
        log(f"[search] exported {describe(candidate)} ({entries[-1]['params']:,} params)")
    manifest = {"schema": MANIFEST_SCHEMA, "opset": opset, "input_shape": list(shape),
                "reference": {"name": "teacher", "int8": f"{REFERENCE}.int8.onnx"}, "candidates": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _kept_manifest(candidates: list[dict], folder: Path, shape, opset: int) -> dict | None:
    """The folder's manifest when it holds exactly these candidates (a resumed run after
    export_only: the models the device timed), else None."""
    from edgekd.search.table import load_manifest

    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = load_manifest(folder)
    except ConfigError:
        return None
    ids = [candidate_id(c["arch"], c["arch_args"], shape, opset) for c in candidates]
    return manifest if [e.get("id") for e in manifest["candidates"]] == ids else None


def search_student(*, teacher, data, distill_cfg, cfg: SearchConfig, folder: Path, build: CandidateBuild,
                   space: list | None = None, log: Callable[[str], None] = lambda line: None) -> SearchResult:
    """The winner of the search and the candidates table. `space`: the candidates (default:
    space.family_space, widened when every candidate meets the budget by far). `data`:
    the edgekd.train.plumbing.TrainData that the distill stage trains on."""
    if not cfg.has_budget():
        raise ConfigError("distill.arch: auto needs a budget: set distill.search.latency_ms or distill.search.speedup")
    start = time.perf_counter()
    level, manifest, table = 0, None, None
    while True:  # the space so far: widening adds candidates, it keeps those that met the budget
        candidates = space if space is not None else [c for k in range(level + 1) for c in family_space(k, cfg.blocks)]
        if cfg.as_fast_as is not None:  # timed like a candidate, never chosen
            candidates = [*candidates, budget_model(cfg.as_fast_as)]
        manifest = export_candidates(candidates, teacher, Path(folder), build, done=manifest, log=log)
        if cfg.export_only:
            raise CandidatesExported(
                f"{count_in_words(candidates)} written to '{folder}'; "
                f"on the device run: edgekd bench {folder} "
                f"--latency-table table.json --provider {cfg.provider} --threads {cfg.threads} --batch-size "
                f"{cfg.batch}; then bring table.json back and go on with: edgekd compress --resume RUN_DIR --set "
                "distill.search.latency_table=table.json --set distill.search.export_only=false")
        timings, table = _timings(manifest, Path(folder), cfg, log, table)
        rows = _rows(manifest, table, cfg)
        budget = _judge(rows, cfg, log)
        met = [r for r in rows if r["met"]]
        if not met:
            raise ConfigError(_none_meets(rows, budget, cfg))
        if all(r["far_below"] for r in rows if not r["budget_model"]):
            if space is None and cfg.latency_table is None and level < MAX_LEVEL:
                level += 1
                log(f"[search] every candidate meets the budget ({budget}) by far: widening the space "
                    f"(level {level}: wider and deeper)")
                continue
            log(f"[search] every candidate meets the budget ({budget}) by far; a larger student may fit")
        break
    _mark_dominated(met)
    survivors = [r for r in met if not r["dominated_by"]]
    _proxies(survivors, teacher, build.spec, data, distill_cfg, cfg, build.seed, log)
    winner = _winner(survivors, cfg.proxy_margin)
    _explain(rows, winner, len(survivors), cfg.proxy_margin)
    result = SearchResult(winner={"arch": winner["arch"], "arch_args": winner["arch_args"]}, rows=rows,
                          budget=budget, timings=timings, seconds=time.perf_counter() - start)
    candidates = sum(not r["budget_model"] for r in rows)
    result.message = (f"chose {winner['name']}: int8 p50 {winner['int8_p50_ms']:.3f} ms, {winner['params']:,} params, "
                      f"proxy val top-1 {winner['proxy_val_top1']:.2f}% ({len(survivors)} of {candidates} candidates "
                      f"met the budget {budget} and were not dominated)")
    log(f"[search] {result.message}")
    return result


def _timings(manifest: dict, folder: Path, cfg: SearchConfig, log, timed: dict | None = None) -> tuple[str, dict]:
    """Where the latencies come from, and the table: read from distill.search.latency_table, or
    measured here (`timed`: the table of the candidates measured before widening)."""
    ids = [e["id"] for e in manifest["candidates"]]
    if cfg.latency_table is not None:
        table = load_table(cfg.latency_table, ids=ids, opset=manifest["opset"], input_shape=manifest["input_shape"])
        where = f"latency table {cfg.latency_table} ({table.get('provider')}, {table.get('threads')} threads, " \
                f"batch {table.get('batch')})"
        log(f"[search] timings from {where}")
        differs = [f"{key} {table.get(key)!r} (distill.search.{key}: {getattr(cfg, key)!r})"
                   for key in ("provider", "threads", "batch") if table.get(key) != getattr(cfg, key)]
        if differs:  # the table is what the device measured: it decides, the recipe's settings only describe
            log(f"[search] note: the latency table was measured with {', '.join(differs)}")
        return where, table
    known = {row["id"] for row in (timed or {}).get("candidates", [])}
    new = {**manifest, "candidates": [e for e in manifest["candidates"] if e["id"] not in known]}
    log(f"[search] timing {len(new['candidates'])} candidates on {cfg.provider} side by side with the teacher's "
        "int8 model")
    table = latency_table(new, folder, provider=cfg.provider, threads=cfg.threads, batch=cfg.batch, log=log)
    table["candidates"] = [*(timed or {}).get("candidates", []), *table["candidates"]]
    (folder / TABLE_FILE).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return f"measured here ({cfg.provider}, {cfg.threads} threads, batch {cfg.batch}; {folder / TABLE_FILE})", table


def _rows(manifest: dict, table: dict, cfg: SearchConfig) -> list[dict]:
    timed = rows_by_id(table)
    rows = []
    for entry in manifest["candidates"]:
        t = timed[entry["id"]]
        p50, ref = float(t["int8_p50_ms"]), float(t.get("reference_p50_ms") or 0.0)
        if cfg.speedup is not None and ref <= 0:  # as_fast_as: checked in _judge
            raise ConfigError(f"latency table {cfg.latency_table} has no reference_p50_ms for candidate "
                              f"{entry['id']}: distill.search.speedup needs the teacher timed beside it; time again")
        fp32 = t.get("fp32_p50_ms")
        fp32 = float(fp32) if isinstance(fp32, (int, float)) and not isinstance(fp32, bool) and fp32 > 0 else None
        rows.append({"id": entry["id"], "name": entry["name"], "arch": entry["arch"], "arch_args": entry["arch_args"],
                     "int8_p50_ms": p50, "int8_p90_ms": t.get("int8_p90_ms"), "reference_p50_ms": ref or None,
                     "speedup": ref / p50 if ref else float("nan"), "params": entry["params"], "macs": entry["macs"],
                     "fp32_p50_ms": fp32, "int8_over_fp32": fp32 / p50 if fp32 else None, "fast_enough": False,
                     "met": False, "far_below": False, "dominated_by": None, "budget_model": is_budget_model(entry),
                     "proxy_val_top1": None, "chosen": False, "why": ""})
    return rows


def _judge(rows: list[dict], cfg: SearchConfig, log) -> str:
    """Marks the rows that meet the budget (and meet it by far); returns the budget in words.
    With distill.search.as_fast_as, its model's speed-up over the teacher (both timed in the
    same pairs) is the speed-up a candidate must reach: the teacher's timing in each pair
    takes the machine's drift out of the comparison."""
    bound, budget = cfg, cfg.describe()
    for row in rows:
        if row["budget_model"]:
            if not row["speedup"] > 0:
                raise ConfigError(f"distill.search.as_fast_as needs {row['name']} timed beside the teacher, and the "
                                  "latency table has no reference_p50_ms for it: time the candidates again")
            bound = dataclasses.replace(cfg, speedup=max(cfg.speedup or 0.0, row["speedup"]))
            budget = (f"{cfg.describe()}: {row['name']}'s int8 p50 is {row['int8_p50_ms']:.4f} ms, "
                      f"{row['speedup']:.2f}x faster than the teacher's")
            row["why"] = "sets the budget (distill.search.as_fast_as); not a candidate"
            log(f"[search] budget: {budget}")
    untimed = [r for r in rows if not r["budget_model"] and r["int8_over_fp32"] is None]
    if cfg.min_int8_speedup is not None and untimed:
        raise ConfigError(f"distill.search.min_int8_speedup needs each candidate's fp32 model timed beside its int8 "
                          f"one, and {untimed[0]['name']} has no fp32_p50_ms (a table of an older edgekd?): time the "
                          "candidates folder again with edgekd bench CANDIDATES_DIR --latency-table")
    for row in rows:
        if not row["budget_model"]:
            row["fast_enough"] = bound.met(row["int8_p50_ms"], row["reference_p50_ms"] or 0.0)
            row["met"] = row["fast_enough"] and cfg.gains_enough(row["int8_over_fp32"])
            row["far_below"] = bound.far_below(row["int8_p50_ms"], row["reference_p50_ms"] or 0.0)
    return budget


def _none_meets(rows: list[dict], budget: str, cfg: SearchConfig) -> str:
    """Why no candidate meets the budget, naming the nearest one and the setting to loosen."""
    candidates = [r for r in rows if not r["budget_model"]]
    fast = [r for r in candidates if r["fast_enough"]]
    if not fast:
        fastest = min(candidates, key=lambda r: r["int8_p50_ms"])
        return (f"no candidate meets the budget {budget}: the fastest, {fastest['name']}, runs at int8 p50 "
                f"{fastest['int8_p50_ms']:.3f} ms ({fastest['speedup']:.2f}x the teacher's); loosen "
                "distill.search.latency_ms / speedup / as_fast_as or name a distill.arch")
    best = max(fast, key=lambda r: r["int8_over_fp32"])
    return (f"no candidate meets the budget {budget}: of the {len(fast)} fast enough, {best['name']} gains most "
            f"from int8, {best['int8_over_fp32']:.2f}x over its fp32 (distill.search.min_int8_speedup "
            f"{cfg.min_int8_speedup:g}); lower min_int8_speedup, widen distill.search.blocks (plain, rep, rep_ac) or "
            "name a distill.arch")


def _relative_latency(row: dict) -> float:
    """int8 p50 over the reference's p50 in the same pair: candidates timed in different pairs
    compare by this, not by their p50s, which the machine's drift between pairs moves."""
    return row["int8_p50_ms"] / row["reference_p50_ms"] if row["reference_p50_ms"] else row["int8_p50_ms"]


def _mark_dominated(rows: list[dict]) -> None:
    """A candidate is dominated when another is at least as fast with at least as many
    parameters (and better in one): it would not be the better student."""
    for row in rows:
        for other in rows:
            if other is row:
                continue
            faster, slower = _relative_latency(other), _relative_latency(row)
            no_worse = faster <= slower and other["params"] >= row["params"]
            better = faster < slower or other["params"] > row["params"]
            if no_worse and better:
                row["dominated_by"] = other["name"]
                break


def _proxies(rows: list[dict], teacher, spec, data, distill_cfg, cfg: SearchConfig, seed: int, log) -> None:
    """proxy_epochs of distillation (the project's offline KD) on the first proxy_images of a
    seeded shuffle of the training set; val top-1 of each."""
    import torch

    from edgekd.distill.offline import distill
    from edgekd.pipeline.context import build_arch
    from edgekd.train.evaluate import accuracy
    from edgekd.train.plumbing import RunOptions

    if not isinstance(data.train_x, torch.Tensor):
        raise ConfigError("distill.arch: auto trains its proxies on a subset of the images in memory; streamed "
                          "data (data.stream) is not supported: name a distill.arch")
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    subset = order[: cfg.proxy_images]
    train_y = data.train_y[subset]
    proxy_data = data.with_train(data.train_x[subset], train_y)
    teacher_cache: dict = {}  # the teacher's outputs on the subset, computed once for all candidates
    for row in rows:
        proxy_cfg = dataclasses.replace(distill_cfg, arch=row["arch"], arch_args=row["arch_args"],
                                        epochs=cfg.proxy_epochs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = build_arch(spec, row["arch"], row["arch_args"])
        distill(student, teacher, proxy_data, proxy_cfg, RunOptions(seed=seed, progress=False), teacher_cache=teacher_cache)
        row["proxy_val_top1"] = accuracy(student, data.val)
        log(f"[search] proxy {row['name']}: val top-1 {row['proxy_val_top1']:.2f}% after {cfg.proxy_epochs} "
            f"epoch(s) on {len(train_y)} images")


def _winner(survivors: list[dict], margin: float) -> dict:
    """The most parameters among the survivors within `margin` points of the best proxy val top-1
    (ties: the better proxy, then the faster): a short proxy favours small students that learn
    fast, and under the same budget the larger one has the capacity the full schedule uses."""
    best = max(r["proxy_val_top1"] for r in survivors)
    close = [r for r in survivors if r["proxy_val_top1"] >= best - margin]
    return max(close, key=lambda r: (r["params"], r["proxy_val_top1"], -_relative_latency(r)))


def _explain(rows: list[dict], winner: dict, survivors: int, margin: float) -> None:
    best = max(r["proxy_val_top1"] for r in rows if r["proxy_val_top1"] is not None)
    for row in rows:
        if row is winner:
            row["chosen"] = True
            row["why"] = (f"best proxy val top-1 of the {survivors} that meet the budget and are not dominated"
                          if row["proxy_val_top1"] == best else
                          f"most parameters of those within {margin:g} points of the best proxy val top-1 "
                          f"({best:.2f}%) of the {survivors} that meet the budget and are not dominated")
        elif row["budget_model"]:
            continue
        elif not row["fast_enough"]:
            row["why"] = "over the budget"
        elif not row["met"]:
            row["why"] = f"int8 only {row['int8_over_fp32']:.2f}x faster than its fp32 (min_int8_speedup)"
        elif row["dominated_by"]:
            row["why"] = f"dominated by {row['dominated_by']} (as fast or faster, as many parameters or more)"
        elif row["proxy_val_top1"] >= best - margin:
            row["why"] = f"fewer parameters than {winner['name']}, proxy val top-1 within {margin:g} points"
        else:
            row["why"] = f"lower proxy val top-1 than {winner['name']}"


def candidates_table(rows: list[dict]) -> str:
    """The candidates table as Markdown, for the report."""
    lines = ["| candidate | int8 p50 ms | speed-up | int8 over fp32 | params | MACs | proxy val top-1 | chosen | why |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = "" if r["proxy_val_top1"] is None else f"{r['proxy_val_top1']:.2f}%"
        gain = "" if r.get("int8_over_fp32") is None else f"{r['int8_over_fp32']:.2f}x"
        lines.append(f"| {r['name']} | {r['int8_p50_ms']:.3f} | {r['speedup']:.2f}x | {gain} | {r['params']:,} | "
                     f"{r['macs']:,} | {top1} | {'yes' if r['chosen'] else ''} | {r['why']} |")
    return "\n".join(lines)


def shape_of(spec) -> str:
    return shape_text((spec.channels, spec.height, spec.width))
