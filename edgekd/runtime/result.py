"""One benchmark result: a model's session opened with its input (open_model), and, once it
is timed, its row (finish_row -> BenchRow): latency statistics, accuracy, agreement with a
reference model, op and provider-node counts. edgekd.runtime.bench times and orders them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError, ModelFileError, first_line
from edgekd.io.onnxfile import check_onnx_file
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.datamatch import (
    EvalSet,
    check_mean_std_channels,
    fitted_images,
    model_labels,
    takes_images,
)
from edgekd.runtime.inputs import (
    INPUT_TYPES,
    SYNTHETIC_AGREEMENT_SAMPLES,
    agreement,
    check_feed_size,
    check_labels,
    feed_shape,
    id_limit,
    predict,
    synthetic,
    topk_accuracy,
)
from edgekd.runtime.measure import (
    MemoryProbe,
    latency_stats,
    low_confidence,
    stopped_early,
)
from edgekd.runtime.metadata import ARCH, MACS, PARAMS, STAGE, meta_int
from edgekd.runtime.preprocessing import NO_PREPROCESSING_NOTE, apply, image_dims, resolve
from edgekd.runtime.providers import resolve_provider
from edgekd.runtime.session import (
    INT8_OPS,
    QDQ_OPS,
    count_params,
    make_session,
    optimized_op_counts,
    provider_route,
    providers_per_node,
)


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
    input_source: str = "synthetic"  # "eval": eval-set images; "synthetic": see edgekd.runtime.inputs.synthetic
    notes: list = dataclasses.field(default_factory=list)  # e.g. why accuracy was not measured
    # what the eval images went through (edgekd.runtime.preprocessing.Preprocessing.describe);
    # None: no eval images reached the model
    preprocessing: dict | None = None
    # how the provider ran: kind ("built-in" or "plugin"), package (name and version), device (a plugin's)
    provider_route: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FailedRow:
    """A result that ONNX Runtime could not produce on its provider (edgekd.errors.ProviderFailed
    or ProviderUnavailable for that model): its name, settings and the provider's message.
    In the JSON report's "failed" list; `error` (the exception) is not part of it."""

    name: str
    path: str
    provider: str
    batch_size: int
    threads: int
    message: str
    error: Exception | None = dataclasses.field(default=None, repr=False, compare=False)
    status: str = "failed"

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "error"}


def failed_row(path: Path, cfg: BenchConfig, error: Exception) -> FailedRow:
    return FailedRow(name=path.stem, path=str(path), provider=cfg.provider, batch_size=cfg.batch_size,
                     threads=cfg.threads, message=str(error), error=error)


def _model_input(session, path):
    """(input, numpy dtype) of the model's first input; inputs of other types are refused."""
    inp = session.get_inputs()[0]
    dtype = INPUT_TYPES.get(inp.type)
    if dtype is None:
        raise ModelFileError(
            f"'{path}' input '{inp.name}' is {inp.type}; only {', '.join(INPUT_TYPES)} inputs can be benchmarked"
        )
    return inp, dtype


def _accuracy_note(eval_x, eval_data, eval_y, inp, takes_images: bool, spec) -> str | None:
    if eval_x is None and eval_data is None:
        return "synthetic input (no eval set): accuracy not measured"
    if not takes_images:
        return (f"synthetic input (input '{inp.name}' is {inp.type} {list(inp.shape)}, not float32 "
                "N x C x H x W images): accuracy not measured")
    if spec is None:  # no metadata, nothing stated: x/255 would be a guess, and a wrong number is worse than none
        return NO_PREPROCESSING_NOTE
    if eval_y is None:
        return "the eval set has no labels: accuracy not measured"
    return None


def _check_input_size(path, inp, dtype, shape: list, fixed_batch: bool) -> None:
    """Refuse (exit 2) an input too large to build, before it is allocated: the model's own
    fixed dims (ModelFileError), or the batch size asked for (ConfigError)."""
    check_feed_size([1, *shape[1:]], dtype, f"one sample of input '{inp.name}' of '{path}'",
                    "export the model with a smaller input")
    if fixed_batch:
        check_feed_size(shape, dtype, f"input '{inp.name}' of '{path}' (its batch dim is fixed)",
                        "export the model with a dynamic batch dim or a smaller input")
    check_feed_size(shape, dtype, f"input '{inp.name}' of '{path}' at batch {shape[0]}",
                    "use a smaller --batch-size (bench.batch_size)", error=ConfigError)


def _output_count(session) -> int | None:
    """Values per row of the model's first output when its shape is fixed but for the batch."""
    dims = session.get_outputs()[0].shape[1:]
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        return int(np.prod(dims))
    return None


def _synthetic_input(path, inp, dtype, shape: list, seed: int = 0) -> np.ndarray:
    """Synthetic input of `shape`; integer inputs get ids inside the embedding they index."""
    if dtype in (np.int32, np.int64):
        return synthetic(shape, dtype, id_limit=id_limit(path, inp.name), seed=seed)
    return synthetic(shape, dtype, seed=seed)


def _agreement_inputs(x, inp, dtype, path, shape: list):
    """(inputs, source) for comparing with a reference: the eval images preprocessed for
    this model (x), else SYNTHETIC_AGREEMENT_SAMPLES synthetic rows of the benchmark's shape."""
    if x is not None:
        return x, "eval"
    check_feed_size([SYNTHETIC_AGREEMENT_SAMPLES, *shape[1:]], dtype, f"the synthetic inputs of '{path}' to compare "
                    "with the reference", "pass --data to compare on the eval set", error=ModelFileError)
    return _synthetic_input(path, inp, dtype, [SYNTHETIC_AGREEMENT_SAMPLES, *shape[1:]], seed=1), "synthetic"


def _outputs_key(path: Path, source: str, x: np.ndarray, cfg: BenchConfig) -> tuple:
    """Predictions of one model on one input set and provider, cached per bench() call:
    a sweep over batch sizes, and the reference that was benched itself, run them once."""
    content = hash(x.tobytes()) if source == "synthetic" else None  # synthetic ids depend on the model
    return (path, source, x.shape, str(x.dtype), content, cfg.provider, cfg.threads, cfg.inter_threads)


def _compare_with_reference(outputs, x, source: str, reference: Path, cfg: BenchConfig, cache: dict,
                            eval_data: EvalSet | None = None) -> dict:
    """Agreement of `outputs` with the reference model run on the same inputs (its own
    preprocessing for eval images, which must fit it as the model's do), on the same provider
    and settings."""
    outputs_cache = cache.setdefault("outputs", {})
    key = _outputs_key(reference, source, x, cfg)
    if key not in outputs_cache:
        session = make_session(reference, cfg, check=False)
        ref_inp, ref_dtype = _model_input(session, reference)
        spec = resolve(cfg.preprocess, session.get_modelmeta().custom_metadata_map)
        if source == "eval" and spec is not None:  # else the reference runs on the model's own inputs
            ref_x = apply(spec, fitted_images(cache["eval_x"], eval_data, spec, ref_inp, reference, cfg.fit_data)[0])
            feed_shape(ref_inp, 1, ref_x.shape, reference)  # the images fit, or a DataError
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
class OpenedModel:
    """A model's session with its input, ready to time (see open_model)."""

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
    spec: object = None  # the Preprocessing of the eval images; None: none known (no accuracy)
    y: object = None  # the eval labels in the model's class indices, or None
    notes: list = dataclasses.field(default_factory=list)  # what the data went through for this model


def _images_shape(x, eval_x, inp):
    """The eval images' shape for the feed: the preprocessed images' (x); without preprocessing
    the raw images lend theirs to a dynamic input only (the values fed are synthetic then)."""
    if x is not None:
        return x.shape
    dynamic = not all(isinstance(d, int) for d in inp.shape[1:])
    return eval_x.shape if eval_x is not None and dynamic else None


def open_model(path: Path, cfg: BenchConfig, eval_x, eval_data: EvalSet | None = None) -> OpenedModel:
    """Check the file again (a long benchmark of several models leaves time for a file to
    change after bench()'s check; out of session_ms), open its session and build its input.
    eval_data: the eval set's labels and class names (datamatch), mapped to the model's."""
    check_onnx_file(path)
    memory = MemoryProbe()
    memory.start()
    start = time.perf_counter()
    session = make_session(path, cfg, check=False)
    session_ms = (time.perf_counter() - start) * 1000.0
    memory.sample()
    meta = session.get_modelmeta().custom_metadata_map
    inp, dtype = _model_input(session, path)
    fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] > 0
    batch = inp.shape[0] if fixed_batch else cfg.batch_size
    images = takes_images(inp)
    spec = resolve(cfg.preprocess, meta) if images else None
    y, notes = model_labels(eval_data, meta, path, images, spec)
    x = None
    if spec is not None:
        check_mean_std_channels(spec, spec.channels or image_dims(inp.shape, spec.layout)[0], path)
    if spec is not None and eval_x is not None:
        fitted, fit_note = fitted_images(eval_x, eval_data, spec, inp, path, cfg.fit_data)
        notes += [fit_note] if fit_note else []
        x = apply(spec, fitted)
    shape = feed_shape(inp, batch, _images_shape(x, eval_x if images else None, inp), path)
    _check_input_size(path, inp, dtype, shape, fixed_batch)
    count = _output_count(session)
    if images and y is not None and count is not None:  # with or without preprocessing: a wrong
        check_labels(y, count, path)  # eval set is an error; before timing, finish_row checks again
    feed_x = _synthetic_input(path, inp, dtype, shape) if x is None else np.resize(x[:batch], shape)
    return OpenedModel(path, cfg, session, session_ms, memory, meta, inp, dtype, batch, shape, images, x,
                  {inp.name: feed_x}, spec, y, notes)


@dataclass(frozen=True)
class Timed:
    """What timing an opened model measured: the timed runs (seconds each), the cold run (ms),
    the warm-up runs made, and MemoryProbe.finish()'s (before, peak, delta)."""

    timings: list
    first_run_ms: float
    warmup_runs: int
    memory: tuple


def finish_row(opened: OpenedModel, timed: Timed, eval_x, eval_data, cache: dict | None, reference: Path | None) -> BenchRow:
    """The row of a timed model: latency statistics, accuracy, reference agreement, op and
    provider-node counts. eval_data: as for open_model, whose labels (opened.y) are the model's."""
    cache = {} if cache is None else cache
    timings, first_run_ms, warmup_runs, memory = timed.timings, timed.first_run_ms, timed.warmup_runs, timed.memory
    eval_y = opened.y
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
        check_labels(eval_y, outputs.shape[1], path)
        top1, top5 = topk_accuracy(outputs, eval_y, 1), topk_accuracy(outputs, eval_y, 5)
    notes = [n for n in (_accuracy_note(eval_x, eval_data, eval_y, inp, opened.takes_images, opened.spec),
                         *opened.notes, stopped_early(timings, cfg.runs, cfg.min_seconds)) if n]

    ref = None
    if reference is not None:
        ref_x, source = _agreement_inputs(x, inp, opened.dtype, path, shape)
        if outputs is None or source != "eval":
            outputs = predict(session, ref_x)
        ref = _compare_with_reference(outputs, ref_x, source, reference, cfg, cache, eval_data)

    ops, nodes = cache.setdefault("ops", {}), cache.setdefault("nodes", {})
    ops_key = (path, cfg.provider)  # what ORT runs depends on the provider (and the sweep's settings do not)
    if ops_key not in ops:
        ops[ops_key] = optimized_op_counts(path, cfg, check=False)
    node_key = (path, batch, cfg.threads, cfg.provider)
    if node_key not in nodes:
        nodes[node_key] = providers_per_node(path, cfg, feed, check=False)
    op_counts, provider_nodes = ops[ops_key], nodes[node_key]
    requested = resolve_provider(cfg.provider)
    fallback = 0 if requested == "CPUExecutionProvider" else provider_nodes.get("CPUExecutionProvider", 0)
    params = meta_int(meta, PARAMS)
    return BenchRow(
        name=path.stem,
        path=str(path),
        stage=meta.get(STAGE),
        arch=meta.get(ARCH),
        provider=cfg.provider,
        providers_used=session.get_providers(),
        batch_size=batch,
        input_shape=shape,
        samples=0 if top1 is None else len(eval_y),
        top1=top1,
        top5=top5,
        params=count_params(path) if params is None else params,
        macs=meta_int(meta, MACS),
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
        notes=notes,
        preprocessing=None if x is None else opened.spec.describe(),
        provider_route=provider_route(cfg.provider, cfg.provider_options),
    )
