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

The parts live in bench_measure.py (timing, statistics, memory, provider node counts) and
bench_data.py (eval set, inputs, predictions, accuracy, reference agreement); their
public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import ModelFileError, first_line
from edgekd.io.onnxfile import check_onnx_file
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.inputs import (
    INPUT_TYPES,
    SYNTHETIC_AGREEMENT_SAMPLES,
    agreement,
    feed_shape,
    id_limit,
    load_eval_set,
    meta_int,
    meta_json,
    predict,
    preprocess,
    synthetic,
    topk_accuracy,
)
from edgekd.runtime.machine import edgekd_version, machine_info
from edgekd.runtime.measure import (
    MemoryProbe,
    latency_stats,
    low_confidence,
    measure_interleaved,
    measure_latency,
    warm_up,
)
from edgekd.runtime.session import (
    INT8_OPS,
    QDQ_OPS,
    count_params,
    make_session,
    optimized_op_counts,
    providers_per_node,
    resolve_provider,
    session_settings,
)

# Older private names, kept for code written against them.
_INPUT_TYPES, _meta_json, _meta_int, _feed_shape, _synthetic = INPUT_TYPES, meta_json, meta_int, feed_shape, synthetic


SCHEMA = "edgekd.bench/1"


# CPU flags that speed up int8 inference (x86: /proc/cpuinfo "flags", Arm: "Features").


@dataclass
class BenchRow:
    """One model's results; to_dict() is the JSON form (schema edgekd.bench/1)."""

    name: str
    path: str
    stage: str | None
    arch: str | None
    provider: str
    providers_used: list
    batch_size: int
    input_shape: list
    samples: int
    top1: float | None
    top5: float | None  # None without labels or with fewer than 5 classes
    params: int | None
    macs: int | None
    file_bytes: int
    latency_ms: dict
    runs: int
    warmup: int
    throughput: float
    session_ms: float
    first_run_ms: float
    op_counts: dict | None
    int8_ops: int | None
    qdq_nodes: int | None
    threads: int = 0  # intra-op threads asked for; 0: ONNX Runtime's default
    low_confidence: list = dataclasses.field(default_factory=list)  # reasons, see low_confidence()
    rss_before_bytes: int | None = None  # see MemoryProbe
    rss_peak_bytes: int | None = None
    rss_delta_bytes: int | None = None
    inter_threads: int = 0  # > 0: parallel execution mode with this many inter-op threads
    # provider -> graph nodes it ran (from a profiled run, see provider_node_counts), and
    # how many of them fell back to the CPU provider when another one was asked for.
    provider_nodes: dict | None = None
    fallback_nodes: int | None = None
    # Agreement with a reference model on the same inputs (None without one): path,
    # argmax_match (%), max_abs_diff, samples, inputs ("eval" or "synthetic").
    reference: dict | None = None
    input_source: str = "synthetic"  # "eval": eval-set images; "synthetic": see bench_data.synthetic
    notes: list = dataclasses.field(default_factory=list)  # e.g. why accuracy was not measured

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _model_input(session, path):
    """(input, numpy dtype) of the model's first input; inputs of other types are refused."""
    inp = session.get_inputs()[0]
    dtype = INPUT_TYPES.get(inp.type)
    if dtype is None:
        raise ModelFileError(
            f"'{path}' input '{inp.name}' is {inp.type}; only {', '.join(INPUT_TYPES)} inputs can be benchmarked"
        )
    return inp, dtype


def _takes_images(inp, dtype) -> bool:
    """Eval-set images fit float32 N x C x H x W inputs (what edgekd exports); other
    models (token ids, feature vectors, uint8 pixels) get synthetic input."""
    return dtype == np.float32 and len(inp.shape) == 4


def _accuracy_note(eval_x, eval_y, inp, takes_images: bool) -> str | None:
    if eval_x is None:
        return "synthetic input (no eval set): accuracy not measured"
    if not takes_images:
        return (f"synthetic input (input '{inp.name}' is {inp.type} {list(inp.shape)}, not float32 "
                "N x C x H x W images): accuracy not measured")
    if eval_y is None:
        return "the eval set has no labels: accuracy not measured"
    return None


def _synthetic_input(path, inp, dtype, shape: list, seed: int = 0) -> np.ndarray:
    """Synthetic input of `shape`; integer inputs get ids inside the embedding they index."""
    if dtype in (np.int32, np.int64):
        return synthetic(shape, dtype, id_limit=id_limit(path, inp.name), seed=seed)
    return synthetic(shape, dtype, seed=seed)


def _agreement_inputs(eval_x, meta: dict, inp, dtype, path, shape: list, takes_images: bool):
    """(inputs, source) for comparing with a reference: the eval images preprocessed for
    this model, else SYNTHETIC_AGREEMENT_SAMPLES synthetic rows of the benchmark's shape."""
    if takes_images and eval_x is not None:
        return preprocess(eval_x, meta), "eval"
    return _synthetic_input(path, inp, dtype, [SYNTHETIC_AGREEMENT_SAMPLES, *shape[1:]], seed=1), "synthetic"


def _outputs_key(path: Path, source: str, x: np.ndarray, cfg: BenchConfig) -> tuple:
    """Predictions of one model on one input set and provider, cached per bench() call:
    a sweep over batch sizes, and the reference that was benched itself, run them once."""
    content = hash(x.tobytes()) if source == "synthetic" else None  # synthetic ids depend on the model
    return (path, source, x.shape, str(x.dtype), content, cfg.provider, cfg.threads, cfg.inter_threads)


def _compare_with_reference(outputs, x, source: str, reference: Path, cfg: BenchConfig, cache: dict) -> dict:
    """Agreement of `outputs` with the reference model run on the same inputs (its own
    preprocessing for eval images), on the same provider and settings."""
    outputs_cache = cache.setdefault("outputs", {})
    key = _outputs_key(reference, source, x, cfg)
    if key not in outputs_cache:
        session = make_session(reference, cfg.provider, cfg.threads, check=False, **session_settings(cfg))
        ref_inp, ref_dtype = _model_input(session, reference)
        if source == "eval":
            feed_shape(ref_inp, 1, cache["eval_x"].shape, reference)  # the images fit, or a DataError
            ref_x = preprocess(cache["eval_x"], session.get_modelmeta().custom_metadata_map)
        else:
            ref_x = x
        if np.dtype(ref_dtype) != ref_x.dtype or len(ref_inp.shape) != ref_x.ndim:
            raise ModelFileError(
                f"reference '{reference}' input is {ref_inp.type} {list(ref_inp.shape)} but the model's inputs "
                f"are {ref_x.dtype} {list(ref_x.shape[1:])}; pass a reference with the same input"
            )
        try:
            outputs_cache[key] = predict(session, ref_x)
        except Exception as exc:  # ORT's errors share no base class but Exception
            raise ModelFileError(
                f"reference '{reference}' cannot run on the model's inputs: {first_line(exc)}; "
                "pass a reference with the same input"
            ) from exc
    result = agreement(outputs, outputs_cache[key])
    return {"path": str(reference), **result, "inputs": source}


@dataclass
class _Opened:
    """A model's session with its input, ready to time (see _open_one)."""

    path: Path
    cfg: BenchConfig
    session: object
    session_ms: float
    memory: MemoryProbe
    meta: dict
    inp: object
    dtype: object
    batch: int
    shape: tuple
    takes_images: bool
    x: object  # the preprocessed eval images, or None
    feed: dict


def _open_one(path: Path, cfg: BenchConfig, eval_x) -> _Opened:
    """Check the file again (a long benchmark of several models leaves time for a file to
    change after bench()'s check; out of session_ms), open its session and build its input."""
    check_onnx_file(path)
    memory = MemoryProbe()
    memory.start()
    start = time.perf_counter()
    session = make_session(path, cfg.provider, cfg.threads, check=False, **session_settings(cfg))
    session_ms = (time.perf_counter() - start) * 1000.0
    memory.sample()
    meta = session.get_modelmeta().custom_metadata_map
    inp, dtype = _model_input(session, path)
    fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] > 0
    batch = inp.shape[0] if fixed_batch else cfg.batch_size
    takes_images = _takes_images(inp, dtype)
    shape = feed_shape(inp, batch, eval_x.shape if takes_images and eval_x is not None else None, path)
    x = preprocess(eval_x, meta) if takes_images and eval_x is not None else None
    feed_x = _synthetic_input(path, inp, dtype, shape) if x is None else np.resize(x[:batch], shape)
    return _Opened(path, cfg, session, session_ms, memory, meta, inp, dtype, batch, shape, takes_images, x,
                   {inp.name: feed_x})


def _bench_one(path: Path, cfg: BenchConfig, eval_x, eval_y, cache: dict | None = None,
               reference: Path | None = None) -> BenchRow:
    """One model, timed on its own. cache: per bench() call, so that a sweep over batch sizes
    and threads counts op types and runs a reference once. reference: a model to compare
    the outputs with."""
    opened = _open_one(path, cfg, eval_x)
    timings, first_run_ms, warmup_runs = measure_latency(
        opened.session, opened.feed, warmup=cfg.warmup, runs=cfg.runs, min_seconds=cfg.min_seconds,
        warmup_seconds=cfg.warmup_seconds,
    )
    memory = opened.memory.finish()  # before accuracy: it holds the whole eval set
    return _finish_one(opened, timings, first_run_ms, warmup_runs, memory, eval_x, eval_y, cache, reference)


def _finish_one(opened: _Opened, timings: list, first_run_ms: float, warmup_runs: int, memory: tuple,
                eval_x, eval_y, cache: dict | None, reference: Path | None) -> BenchRow:
    """The row of a timed model: latency statistics, accuracy, reference agreement, op and
    provider-node counts. memory: MemoryProbe.finish()'s (before, peak, delta)."""
    cache = {} if cache is None else cache
    path, cfg, session, meta, inp = opened.path, opened.cfg, opened.session, opened.meta, opened.inp
    batch, shape, x, feed = opened.batch, opened.shape, opened.x, opened.feed
    stats = latency_stats(timings)
    rss_before, rss_peak, rss_delta = memory
    top1 = top5 = None
    outputs = None
    if x is not None and eval_y is not None:
        key = _outputs_key(path, "eval", x, cfg)
        outputs = cache.setdefault("outputs", {}).get(key)
        if outputs is None:
            outputs = cache["outputs"][key] = predict(session, x, eval_y)
        top1, top5 = topk_accuracy(outputs, eval_y, 1), topk_accuracy(outputs, eval_y, 5)
    note = _accuracy_note(eval_x, eval_y, inp, opened.takes_images)

    ref = None
    if reference is not None:
        ref_x, source = _agreement_inputs(eval_x, meta, inp, opened.dtype, path, shape, opened.takes_images)
        if outputs is None or source != "eval":
            outputs = predict(session, ref_x)
        ref = _compare_with_reference(outputs, ref_x, source, reference, cfg, cache)

    ops, nodes = cache.setdefault("ops", {}), cache.setdefault("nodes", {})
    if path not in ops:
        ops[path] = optimized_op_counts(path, cfg.provider, cfg.threads, check=False)
    node_key = (path, batch, cfg.threads)
    if node_key not in nodes:
        nodes[node_key] = providers_per_node(path, cfg, feed, check=False)
    op_counts, provider_nodes = ops[path], nodes[node_key]
    requested = resolve_provider(cfg.provider)
    fallback = 0 if requested == "CPUExecutionProvider" else provider_nodes.get("CPUExecutionProvider", 0)
    params = meta_int(meta, "edgekd.params")
    return BenchRow(
        name=path.stem,
        path=str(path),
        stage=meta.get("edgekd.stage"),
        arch=meta.get("edgekd.arch"),
        provider=cfg.provider,
        providers_used=session.get_providers(),
        batch_size=batch,
        input_shape=shape,
        samples=0 if top1 is None else len(eval_y),
        top1=top1,
        top5=top5,
        params=count_params(path) if params is None else params,
        macs=meta_int(meta, "edgekd.macs"),
        file_bytes=path.stat().st_size,
        latency_ms=stats,
        runs=len(timings),
        warmup=warmup_runs,
        throughput=batch / (stats["mean"] / 1000.0),
        session_ms=opened.session_ms,
        first_run_ms=first_run_ms,
        op_counts=op_counts,
        int8_ops=None if op_counts is None else sum(c for op, c in op_counts.items() if op in INT8_OPS),
        qdq_nodes=None if op_counts is None else sum(c for op, c in op_counts.items() if op in QDQ_OPS),
        threads=cfg.threads,
        low_confidence=low_confidence(timings, stats),
        rss_before_bytes=rss_before,
        rss_peak_bytes=rss_peak,
        rss_delta_bytes=rss_delta,
        inter_threads=cfg.inter_threads,
        provider_nodes=provider_nodes or None,
        fallback_nodes=fallback if provider_nodes else None,
        reference=ref,
        input_source="synthetic" if x is None else "eval",
        notes=[note] if note else [],
    )


def _progress(items: list, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional on devices
        return items
    return tqdm(items, desc="bench", unit="result")


def bench(paths: list, *, eval_set=None, cfg: BenchConfig | None = None, progress: bool = True,
          batch_sizes: list | None = None, threads: list | None = None, reference=None,
          references: dict | None = None) -> list:
    """Benchmark each model; with eval_set (an .npz path) also top-1 accuracy, else
    latency only, on the eval images or synthetic input.

    batch_sizes, threads: sweep these instead of cfg.batch_size / cfg.threads; one row
    per (model, batch size, threads), in that order. A model with a fixed batch dim
    gets one row per thread count.
    reference: a model whose outputs every model is compared with (argmax match, max
    abs difference; on the eval images, else synthetic input); references: the same per
    model path (reference wins)."""
    cfg = cfg or BenchConfig()
    resolve_provider(cfg.provider)  # a typo fails before any model is loaded
    configs = [
        dataclasses.replace(cfg, batch_size=b, threads=t)  # BenchConfig validates each
        for b in (batch_sizes or [cfg.batch_size])
        for t in (threads or [cfg.threads])
    ]
    paths = [Path(p) for p in paths]
    refs = {Path(k): Path(v) for k, v in (references or {}).items()}
    if reference is not None:
        refs = {p: Path(reference) for p in paths}
    for path in [*paths, *sorted(set(refs.values()))]:  # every file, before any session: fail at once
        check_onnx_file(path)
    eval_x = eval_y = None
    if eval_set is not None:
        eval_x, eval_y, _ = load_eval_set(eval_set)
    cache = {"eval_x": eval_x}  # op counts, provider nodes and reference outputs, see _bench_one
    if cfg.interleave:
        return _bench_interleaved([(p, c) for p in paths for c in configs], eval_x, eval_y, cache, refs, progress)
    rows, done, fixed_batch = [], set(), {}  # fixed_batch: path -> its fixed batch
    for path, run_cfg in _progress([(p, c) for p in paths for c in configs], progress):
        if (path, fixed_batch.get(path), run_cfg.threads) in done:
            continue  # a fixed batch dim: another batch size would repeat a row
        row = _bench_one(path, run_cfg, eval_x, eval_y, cache, refs.get(path))
        if row.batch_size != run_cfg.batch_size:  # the model's batch dim is fixed
            fixed_batch[path] = row.batch_size
        if (path, row.batch_size, row.threads) not in done:
            done.add((path, row.batch_size, row.threads))
            rows.append(row)
    return rows


def _bench_interleaved(items: list, eval_x, eval_y, cache: dict, refs: dict, progress: bool) -> list:
    """bench.interleave: every (model, settings) result timed side by side. All sessions are
    opened and warmed up first (each one's memory is measured over its session creation,
    cold run and warm-up, before the others run), then measure_interleaved times them in
    short rotating rounds, so that a change in the machine's speed hits every model alike;
    accuracy and the rest follow per model. A model with a fixed batch dim gets one result
    per thread count, as in the sequential mode."""
    opened, seen = [], set()
    for path, run_cfg in _progress(items, progress):
        model = _open_one(path, run_cfg, eval_x)
        if (path, model.batch, run_cfg.threads) in seen:
            continue  # a fixed batch dim: another batch size would repeat a result
        seen.add((path, model.batch, run_cfg.threads))
        first_run_ms, warmup_runs = warm_up(model.session, model.feed, warmup=run_cfg.warmup,
                                            warmup_seconds=run_cfg.warmup_seconds)
        opened.append((model, first_run_ms, warmup_runs, model.memory.finish()))
    # one protocol for all: the most runs and seconds any result asks for (they share one BenchConfig
    # but for batch size and threads)
    runs, min_seconds = max(m.cfg.runs for m, *_ in opened), max(m.cfg.min_seconds for m, *_ in opened)
    timings = measure_interleaved([(m.session, m.feed) for m, *_ in opened], runs=runs, min_seconds=min_seconds)
    rows = []
    for (model, first_run_ms, warmup_runs, memory), times in zip(opened, timings):
        row = _finish_one(model, times, first_run_ms, warmup_runs, memory, eval_x, eval_y, cache,
                          refs.get(model.path))
        if len(opened) > 1:
            row.notes.append(f"timed interleaved with {len(opened) - 1} other result(s); memory covers session "
                             "creation, the cold run and warm-up")
        rows.append(row)
    return rows


def run_dir_references(paths: list) -> dict:
    """X.int8.onnx -> X.fp32.onnx where both are there: a run's int8 model is compared
    with the fp32 student it was quantized from."""
    by_name = {Path(p).name: Path(p) for p in paths}
    return {p: by_name[name.replace(".int8.onnx", ".fp32.onnx")] for name, p in by_name.items()
            if name.endswith(".int8.onnx") and name.replace(".int8.onnx", ".fp32.onnx") in by_name}


def bench_run_dir(run_dir, cfg: BenchConfig | None = None, progress: bool = True, *, eval_set=None,
                  reference=None, **sweep) -> list:
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
                 references=run_dir_references(paths), **sweep)


def to_json(rows: list, extra: dict | None = None, *, cfg: BenchConfig | None = None) -> dict:
    """The JSON report; `extra` entries are added at the top level."""
    report = {
        "schema": SCHEMA,
        "edgekd_version": edgekd_version(),
        "machine": machine_info(),
        "config": None if cfg is None else dataclasses.asdict(cfg),
        "models": [row.to_dict() for row in rows],
    }
    report.update(extra or {})
    return report
