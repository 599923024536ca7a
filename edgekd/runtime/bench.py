"""Benchmark ONNX classifiers with ONNX Runtime: accuracy, latency, size and int8 proof.

This module runs on edge devices, so it needs only onnxruntime and numpy: it never
imports torch, and onnx (for onnx.checker, parameter counts and op counts) and tqdm
(progress bar) are optional and imported only when used. Every model file is checked
before ONNX Runtime opens it (check_onnx_file), with or without onnx.

Latency protocol: one cold run (reported as first_run_ms), warm-up runs (at least
`warmup` and `warmup_seconds`), then timed runs of one batch until both `runs` runs are
done and `min_seconds` have passed. Only session.run is timed. Models are timed one after
another, or with bench.interleave all side by side in short rotating rounds (fair
comparisons on a machine whose speed changes while it runs).

The parts live in measure.py (timing, statistics, memory, provider node counts), inputs.py
(eval set, inputs, predictions, accuracy, reference agreement), session.py (sessions on a
provider of providers.PROVIDERS) and result.py (one model's row); this module picks what to
run, times it sequentially or interleaved, and builds the JSON report (to_json).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import (
    ConfigError,
    EdgekdError,
    ModelFileError,
    ProviderFailed,
    ProviderUnavailable,
    first_line,
)
from edgekd.io.onnxfile import check_onnx_file
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.eval_folder import load_eval_data
from edgekd.runtime.machine import edgekd_version, machine_info
from edgekd.runtime.measure import (
    MAX_THREADS,
    check_protocol,
    measure_interleaved,
    measure_latency,
    warm_up,
)
from edgekd.runtime.providers import resolve_provider
from edgekd.runtime.result import (
    BenchRow,
    FailedRow,
    Timed,
    failed_row,
    finish_row,
    open_model,
)
from edgekd.runtime.session import check_provider_available

# What one model can fail with on one provider: a failed result when several are compared
PROVIDER_FAILURES = (ProviderFailed, ProviderUnavailable)

SCHEMA = "edgekd.bench/1"


def check_sweep(batch_sizes, threads, inter_threads: int = 0) -> None:
    """ConfigError (exit 2) unless batch sizes and threads are non-empty lists of whole
    numbers: batch sizes >= 1 (the memory cap is checked per model, see result.open_model),
    threads and inter_threads 0..MAX_THREADS."""
    for key, flag, values, low, high in (("batch_size", "--batch-size", batch_sizes, 1, None),
                                         ("threads", "--threads", threads, 0, MAX_THREADS),
                                         ("inter_threads", "--inter-threads", [inter_threads], 0, MAX_THREADS)):
        if not isinstance(values, (list, tuple)) or not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
                for v in values):
            bound = "must be positive" if low == 1 else f"must be >= 0 and at most {high}"
            raise ConfigError(f"bench.{key} {bound}, whole numbers ({flag}), got {str(values)[:60]}")


def _bench_one(path: Path, cfg: BenchConfig, eval_x, eval_y, cache: dict | None = None,
               reference: Path | None = None) -> BenchRow:
    """One model, timed on its own. cache: per bench() call, so that a sweep over batch sizes
    and threads counts op types and runs a reference once. reference: a model to compare
    the outputs with."""
    opened = open_model(path, cfg, eval_x, eval_y)
    with ProviderRun(path, cfg):  # the timed runs, and the accuracy and profiled runs of finish_row
        timings, first_run_ms, warmup_runs = measure_latency(
            opened.session, opened.feed, warmup=cfg.warmup, runs=cfg.runs, min_seconds=cfg.min_seconds,
            warmup_seconds=cfg.warmup_seconds,
        )
        memory = opened.memory.finish()  # before accuracy: it holds the whole eval set
        return finish_row(opened, Timed(timings, first_run_ms, warmup_runs, memory), eval_x, eval_y, cache, reference)


class ProviderRun:
    """Around session.run: an error of ONNX Runtime's (its own exception types, or a
    RuntimeError) becomes ProviderFailed (a failed result when several are compared) with
    the provider's message. Anything else is not the provider's and goes through."""

    def __init__(self, path, cfg: BenchConfig):
        self.path, self.cfg = path, cfg

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from_ort = type(exc).__module__.startswith("onnxruntime") or isinstance(exc, RuntimeError)
        if exc is None or isinstance(exc, EdgekdError) or not from_ort:
            return False
        raise ProviderFailed(f"ONNX Runtime cannot run '{self.path}' on {self.cfg.provider}: "
                             f"{first_line(exc)}") from exc


def interleaves(cfg: BenchConfig, paths: list, providers: list) -> bool:
    """bench.interleave, or when unset: whether several models or providers are compared."""
    return cfg.interleave if cfg.interleave is not None else (len(paths) > 1 or len(providers) > 1)


def _progress(items: list, enabled: bool):
    from edgekd.progress import progress_bar

    return progress_bar(items, enabled=enabled, desc="bench", unit="result")


@dataclass(frozen=True)
class Sweep:
    """What bench() runs every model with beyond one BenchConfig: each of these batch sizes,
    thread counts and providers (None: the BenchConfig's own one)."""

    batch_sizes: list | None = None
    threads: list | None = None
    providers: list | None = None


def bench(paths: list, *, eval_set=None, cfg: BenchConfig | None = None, progress: bool = True,
          sweep: Sweep | None = None, reference=None, references: dict | None = None,
          keep_failures: bool = False) -> list:
    """Benchmark each model; with eval_set (an .npz, a dataset or an image folder) also top-1, else
    latency only, on the eval images or synthetic input.

    sweep: batch sizes and threads instead of cfg.batch_size / cfg.threads; one row
    per (model, batch size, threads), in that order. A model with a fixed batch dim
    gets one row per thread count.
    reference: a model whose outputs every model is compared with (argmax match, max
    abs difference; on the eval images, else synthetic input); references: the same per
    model path (reference wins).
    sweep.providers: bench each model on each of these (default: cfg.provider); rows per model,
    then provider. keep_failures: a model that ONNX Runtime cannot load or run on a provider
    (PROVIDER_FAILURES) is a FailedRow and the others still run; when every result fails the
    first error is raised. Without it, the first failure is raised."""
    cfg = cfg or BenchConfig()
    sweep = sweep or Sweep()
    batch_sizes, threads = sweep.batch_sizes, sweep.threads
    providers = list(sweep.providers or [cfg.provider])
    for provider in providers:  # a typo or a missing provider fails before any model is loaded
        resolve_provider(provider)
        check_provider_available(provider, cfg.provider_options)
    # finite and bounded, or exit 2 now (the timing loops also stop at measure's caps)
    check_protocol(warmup=cfg.warmup, runs=cfg.runs, min_seconds=cfg.min_seconds, warmup_seconds=cfg.warmup_seconds)
    check_sweep(list(batch_sizes or [cfg.batch_size]), list(threads or [cfg.threads]), cfg.inter_threads)
    configs = [
        dataclasses.replace(cfg, provider=provider, batch_size=b, threads=t)  # BenchConfig validates each
        for provider in providers
        for b in (batch_sizes or [cfg.batch_size])
        for t in (threads or [cfg.threads])
    ]
    paths = [Path(p) for p in paths]
    refs = {Path(k): Path(v) for k, v in (references or {}).items()}
    if reference is not None:
        refs = {p: Path(reference) for p in paths}
    for path in [*paths, *sorted(set(refs.values()))]:  # every file, before any session: fail at once
        check_onnx_file(path)
    # an .npz, a dataset's name, or an image folder decoded for the models' stated or own preprocessing
    eval_x, eval_y = load_eval_data(eval_set, paths, cfg.preprocess, fit=cfg.fit_data,  # eval_y: a datamatch.EvalSet
                                    skip_bad=cfg.skip_bad)
    cache = {"eval_x": eval_x}  # op counts, provider nodes and reference outputs, see result.finish_row
    items = [(p, c) for p in paths for c in configs]
    if interleaves(cfg, paths, providers):
        return _all_failed_raises(_bench_interleaved(items, eval_x, eval_y, cache, refs, progress, keep_failures))
    rows, done, fixed_batch = [], set(), {}  # fixed_batch: path -> its fixed batch
    for path, run_cfg in _progress(items, progress):
        if (path, fixed_batch.get(path), run_cfg.threads, run_cfg.provider) in done:
            continue  # a fixed batch dim: another batch size would repeat a row
        try:
            row = _bench_one(path, run_cfg, eval_x, eval_y, cache, refs.get(path))
        except PROVIDER_FAILURES as exc:
            if not keep_failures:
                raise
            rows.append(failed_row(path, run_cfg, exc))
            continue
        if row.batch_size != run_cfg.batch_size:  # the model's batch dim is fixed
            fixed_batch[path] = row.batch_size
        if (path, row.batch_size, row.threads, row.provider) not in done:
            done.add((path, row.batch_size, row.threads, row.provider))
            rows.append(row)
    return _all_failed_raises(rows)


def _all_failed_raises(rows: list) -> list:
    """The rows, unless every one failed: then the first failure's error (exit 2, as for one model)."""
    if rows and all(isinstance(r, FailedRow) for r in rows):
        raise rows[0].error
    return rows


def _bench_interleaved(items: list, eval_x, eval_y, cache: dict, refs: dict, progress: bool,
                       keep_failures: bool = False) -> list:
    """bench.interleave: every (model, settings) result timed side by side. All sessions are
    opened and warmed up first (each one's memory is measured over its session creation,
    cold run and warm-up, before the others run), then measure_interleaved times them in
    short rotating rounds, so that a change in the machine's speed hits every model alike;
    accuracy and the rest follow per model. A model with a fixed batch dim gets one result
    per thread count, as in the sequential mode. keep_failures: as for bench(); a failed
    result keeps its place among the rows."""
    opened, seen, failed = [], set(), {}  # failed: position among the results -> FailedRow
    for path, run_cfg in _progress(items, progress):
        try:
            model = open_model(path, run_cfg, eval_x, eval_y)
            if (path, model.batch, run_cfg.threads, run_cfg.provider) in seen:
                continue  # a fixed batch dim: another batch size would repeat a result
            seen.add((path, model.batch, run_cfg.threads, run_cfg.provider))
            with ProviderRun(path, run_cfg):
                first_run_ms, warmup_runs = warm_up(model.session, model.feed, warmup=run_cfg.warmup,
                                                    warmup_seconds=run_cfg.warmup_seconds)
        except PROVIDER_FAILURES as exc:
            if not keep_failures:
                raise
            failed[len(opened) + len(failed)] = failed_row(path, run_cfg, exc)
            continue
        opened.append((model, first_run_ms, warmup_runs, model.memory.finish()))
    if not opened:
        return [failed[k] for k in sorted(failed)]
    # one protocol for all: the most runs and seconds any result asks for (they share one BenchConfig
    # but for batch size and threads)
    runs, min_seconds = max(m.cfg.runs for m, *_ in opened), max(m.cfg.min_seconds for m, *_ in opened)
    timings = measure_interleaved([(m.session, m.feed) for m, *_ in opened], runs=runs, min_seconds=min_seconds)
    rows = []
    for (model, first_run_ms, warmup_runs, memory), times in zip(opened, timings):
        try:
            with ProviderRun(model.path, model.cfg):  # accuracy and the profiled run
                row = finish_row(model, Timed(times, first_run_ms, warmup_runs, memory), eval_x, eval_y, cache,
                                 refs.get(model.path))
        except PROVIDER_FAILURES as exc:
            if not keep_failures:
                raise
            rows.append(failed_row(model.path, model.cfg, exc))
            continue
        if len(opened) > 1:
            row.notes.append(f"timed interleaved with {len(opened) - 1} other result(s); memory covers session "
                             "creation, the cold run and warm-up")
        rows.append(row)
    for position in sorted(failed):
        rows.insert(position, failed[position])
    return rows


def run_dir_references(paths: list) -> dict:
    """X.int8.onnx -> X.fp32.onnx where both are there: a run's int8 model is compared
    with the fp32 student it was quantized from."""
    by_name = {Path(p).name: Path(p) for p in paths}
    return {p: by_name[name.replace(".int8.onnx", ".fp32.onnx")] for name, p in by_name.items()
            if name.endswith(".int8.onnx") and name.replace(".int8.onnx", ".fp32.onnx") in by_name}


def bench_run_dir(run_dir, cfg: BenchConfig | None = None, progress: bool = True, *, eval_set=None,
                  reference=None, sweep: Sweep | None = None, keep_failures: bool = False) -> list:
    """Benchmark every *.onnx in a run directory (teacher first), with eval_set or else
    run_dir/eval.npz for accuracy when it exists; the int8 model is compared with the
    fp32 one (run_dir_references) unless `reference` is given for all."""
    run_dir = Path(run_dir)
    paths = sorted(run_dir.glob("*.onnx"), key=lambda p: (not p.name.startswith("teacher"), p.name))
    if not paths:
        raise ModelFileError(f"no .onnx files in '{run_dir}'; export models first or check the run directory")
    if eval_set is None and (run_dir / "eval.npz").is_file():
        eval_set = run_dir / "eval.npz"
    return bench(paths, eval_set=eval_set, cfg=cfg, progress=progress, reference=reference,
                 references=run_dir_references(paths), sweep=sweep, keep_failures=keep_failures)


def to_json(rows: list, extra: dict | None = None, *, cfg: BenchConfig | None = None) -> dict:
    """The JSON report; `extra` entries are added at the top level."""
    report = {
        "schema": SCHEMA,
        "edgekd_version": edgekd_version(),
        "machine": machine_info(),
        "config": None if cfg is None else dataclasses.asdict(cfg),
        "models": [row.to_dict() for row in rows if not isinstance(row, FailedRow)],
        # results ONNX Runtime could not produce on their provider, with its message
        "failed": [row.to_dict() for row in rows if isinstance(row, FailedRow)],
    }
    report.update(extra or {})
    return report
