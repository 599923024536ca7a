"""Benchmark ONNX classifiers with ONNX Runtime: accuracy, latency, size and int8 proof.

This module runs on edge devices, so it needs only onnxruntime and numpy: it never
imports torch, and onnx (for onnx.checker, parameter counts and op counts) and tqdm
(progress bar) are optional and imported only when used. Every model file is checked
before ONNX Runtime opens it (check_onnx_file), with or without onnx.

Latency protocol: one cold run (reported as first_run_ms), `warmup` runs, then timed
runs of one batch until both `runs` runs are done and `min_seconds` have passed. Only
session.run is timed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import onnxfile
from .benchfmt import format_count, format_size, format_table  # noqa: F401  (re-exported)
from .errors import ConfigError, DataError, ModelFileError, ProviderUnavailable
from .onnxfile import _first_line, check_onnx_file
from .recipe import BenchConfig

SCHEMA = "edgekd.bench/1"

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
}
_SHORT_NAMES = {ep: short for short, ep in PROVIDERS.items()}

# How to get a provider that the installed onnxruntime lacks.
_INSTALL_HINTS = {
    "cuda": "install onnxruntime-gpu in place of onnxruntime "
    "(pip uninstall onnxruntime && pip install onnxruntime-gpu)",
    "tensorrt": "install onnxruntime-gpu in place of onnxruntime and TensorRT",
    "openvino": "install onnxruntime-openvino in place of onnxruntime",
    "dml": "install onnxruntime-directml in place of onnxruntime",
    "qnn": "install onnxruntime-qnn in place of onnxruntime",
    "coreml": "use the onnxruntime wheel for macOS, which includes it (macOS only)",
    "nnapi": "use the onnxruntime-android package (Android only)",
    "xnnpack": "use the onnxruntime-android package or build onnxruntime with --use_xnnpack",
    "dnnl": "build onnxruntime from source with --use_dnnl",
    "acl": "build onnxruntime from source with --use_acl (Arm Compute Library)",
    "armnn": "build onnxruntime from source with --use_armnn",
    "migraphx": "build onnxruntime from source with --use_migraphx (AMD ROCm)",
}
_GENERIC_HINT = "install an onnxruntime build that includes it"

# Integer ops after ORT's graph optimisation: QDQ groups fused into these prove that
# the model really runs int8 kernels (com.microsoft ops included, for example the NHWC
# QLinearConv and NhwcMaxPool that the CPU provider emits).
INT8_OPS = frozenset(
    {
        "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
        "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat", "QLinearReduceMean",
        "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearWhere", "QGemm",
        "QAttention", "NhwcMaxPool", "MatMulInteger", "ConvInteger",
        "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    }
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

# CPU flags that speed up int8 inference (x86: /proc/cpuinfo "flags", Arm: "Features").
INT8_CPU_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "dotprod", "i8mm")

# ONNX tensor types this module can feed.
_INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


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
    rss_before_bytes: int | None = None  # see memory_probe()
    rss_peak_bytes: int | None = None
    rss_delta_bytes: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- sessions ------------------------------------------------------------------------


def _resolve_provider(provider: str) -> str:
    if provider in PROVIDERS:
        return PROVIDERS[provider]
    if provider in PROVIDERS.values():
        return provider
    raise ConfigError(f"unknown provider '{provider}'; known: {', '.join(PROVIDERS)}")


def provider_list() -> list[dict]:
    """The providers of the installed onnxruntime, then the known ones it lacks with
    how to get them: dicts with short (None for providers edgekd has no short name
    for; --provider then takes the ORT name), ort_name, available, hint."""
    available = ort.get_available_providers()
    out = [{"short": _SHORT_NAMES.get(ep), "ort_name": ep, "available": True, "hint": None} for ep in available]
    for short, ep in PROVIDERS.items():
        if ep not in available:
            out.append({"short": short, "ort_name": ep, "available": False,
                        "hint": _INSTALL_HINTS.get(short, _GENERIC_HINT)})
    return out


def make_session(path, provider: str = "cpu", threads: int = 0, *, optimized_path=None, check: bool = True):
    """An InferenceSession on `provider` (a short name), which must really be the one used.

    Every session edgekd creates on a model file comes from here, and the file passes
    check_onnx_file first (external data inside the model's folder, onnx.checker).
    optimized_path: where ORT writes the optimised graph (used for the int8 op counts).
    check: False only right after check_onnx_file(path) has passed, to skip repeating it.
    """
    ep = _resolve_provider(provider)
    available = ort.get_available_providers()
    if ep not in available:
        names = ", ".join(_SHORT_NAMES.get(p, p) for p in available)
        hint = _INSTALL_HINTS.get(_SHORT_NAMES[ep], _GENERIC_HINT)
        raise ProviderUnavailable(
            f"execution provider '{provider}' ({ep}) is not in this onnxruntime {ort.__version__} "
            f"(available: {names}); {hint}"
        )
    if check:
        check_onnx_file(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3  # ORT warns that NCHWc graphs are machine specific; known
    # CPU stays in the list so ops the accelerator lacks still run.
    providers = [ep] if ep == "CPUExecutionProvider" else [ep, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT's exception classes share no common base but Exception
        raise ModelFileError(
            f"ONNX Runtime cannot load '{path}' with {provider}: {_first_line(exc)}; "
            "re-export the model or try another provider"
        ) from exc
    used = session.get_providers()
    if used[0] != ep:  # ORT falls back to CPU silently when a provider fails to start
        raise ProviderUnavailable(
            f"onnxruntime has {ep} but could not start it for '{path}' and fell back to {used[0]}; "
            "check that the provider's drivers and libraries are installed"
        )
    return session


def optimized_op_counts(path, provider: str = "cpu", threads: int = 0, *, check: bool = True) -> dict | None:
    """op_type -> count in the graph ORT actually runs; None without onnx or when the
    provider compiles nodes that ORT cannot save (TensorRT, OpenVINO, ...).
    check: as for make_session."""
    onnx = onnxfile._onnx()
    if onnx is None:
        return None
    if check:
        check_onnx_file(path)  # here, so that a bad file is an error, not "no op counts"
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        try:
            make_session(path, provider, threads, optimized_path=optimized, check=False)
        except ModelFileError:
            return None
        graph = onnx.load(str(optimized), load_external_data=False).graph
        return dict(Counter(node.op_type for node in graph.node))


def count_params(path) -> int | None:
    """Elements in the graph initializers; None without onnx."""
    onnx = onnxfile._onnx()
    if onnx is None:
        return None
    graph = onnx.load(str(path), load_external_data=False).graph  # dims suffice, not the data
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


# -- metadata and data ---------------------------------------------------------------


def _meta_json(meta: dict, key: str):
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise ModelFileError(
            f"model metadata {key} is not valid JSON ({meta[key][:40]!r}); re-export the model"
        ) from exc


def _meta_int(meta: dict, key: str) -> int | None:
    if key not in meta:
        return None
    try:
        return int(meta[key])
    except ValueError as exc:
        raise ModelFileError(
            f"model metadata {key} is not an integer ({meta[key][:40]!r}); re-export the model"
        ) from exc


def load_eval_set(path):
    """(x uint8 NCHW, y int64 or None, class_names or None) from an .npz file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"eval set '{path}' does not exist; check the path")
    if not path.is_file():  # a folder, or a FIFO that would block the reader
        raise DataError(f"eval set '{path}' is not a regular file; pass an .npz file")
    try:
        with np.load(path, allow_pickle=False) as data:  # no pickles: never run code from a file
            arrays = {key: data[key] for key in ("x", "y", "class_names") if key in data.files}
    except Exception as exc:
        raise DataError(
            f"eval set '{path}' is not a readable .npz without pickled objects: {_first_line(exc)}; "
            "save it with numpy.savez and plain arrays"
        ) from exc
    x = arrays.get("x")
    if x is None:
        raise DataError(f"eval set '{path}' has no array 'x'; save the images as x (uint8, N x C x H x W)")
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
        raise DataError(
            f"eval set '{path}': x must be non-empty uint8 N x C x H x W, got {x.dtype} {list(x.shape)}; "
            "save raw pixels 0-255"
        )
    y = arrays.get("y")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise DataError(
                f"eval set '{path}': y must be {len(x)} integer labels, got {y.dtype} {list(y.shape)}; "
                "save one label per image"
            )
        y = y.astype(np.int64)
    names = arrays.get("class_names")
    return x, y, (None if names is None else [str(n) for n in names])


def preprocess(x_uint8: np.ndarray, meta: dict) -> np.ndarray:
    """(x/255 - mean) / std per channel (axis 1), mean/std from the model's metadata;
    models without them get x/255 only."""
    x = x_uint8.astype(np.float32) / 255.0
    channels = x.shape[1]
    for key in ("edgekd.mean", "edgekd.std"):
        values = _meta_json(meta, key)
        if values is None:
            continue
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 1 or len(values) not in (1, channels):
            raise DataError(
                f"model metadata {key} has {values.size} values but the images have {channels} channels; "
                "use an eval set made for this model"
            )
        values = values.reshape(1, -1, *([1] * (x.ndim - 2)))
        x = x - values if key == "edgekd.mean" else x / values
    return x


def _feed_shape(inp, batch: int, eval_shape, path) -> list:
    """The input shape to run: fixed model dims, dynamic ones taken from the eval set."""
    dims = inp.shape[1:]
    if eval_shape is not None:
        if len(eval_shape) != len(inp.shape) or any(
            isinstance(d, int) and d != e for d, e in zip(dims, eval_shape[1:])
        ):
            raise DataError(
                f"eval set images are {list(eval_shape[1:])} but '{path}' input '{inp.name}' expects "
                f"{list(dims)}; use an eval set made for this model"
            )
        return [batch, *eval_shape[1:]]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ModelFileError(
            f"'{path}' input '{inp.name}' has dynamic dims {list(dims)}; export it with a fixed input "
            "size or pass an eval set to take the shape from"
        )
    return [batch, *dims]


def _synthetic(shape: list, dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


# -- measuring -----------------------------------------------------------------------


def measure_latency(session, feed: dict, *, warmup: int, runs: int, min_seconds: float):
    """(timings_ms, first_run_ms): the cold first run, `warmup` untimed runs, then timed
    runs until at least `runs` are done and `min_seconds` have passed."""

    def timed_run() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - start) * 1000.0

    first_run_ms = timed_run()
    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    start = time.perf_counter()
    while len(timings) < runs or time.perf_counter() - start < min_seconds:
        timings.append(timed_run())
    return timings, first_run_ms


def latency_stats(timings_ms) -> dict:
    t = np.asarray(timings_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {
        "p50": float(p50), "p90": float(p90), "p99": float(p99),
        "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()),
    }


# A percentile needs far more runs than 1 / (1 - p) to be stable. edgekd flags a p90
# from fewer than 64 timed runs and a p99 from fewer than 662 (the query counts MLPerf
# Inference's early-stopping rule needs at least for these percentiles).
MIN_RUNS_P90 = 64
MIN_RUNS_P99 = 662
MAX_CV = 0.5  # standard deviation / mean of the timed runs
MAX_TAIL = 3.0  # p99 / p50


def low_confidence(timings_ms, stats: dict | None = None) -> list[str]:
    """Reasons not to trust a result's percentiles (empty when there are none): too few
    timed runs for p90 (< 64) or p99 (< 662), a coefficient of variation above 0.5 (a
    busy or throttling machine), or a p99 above 3x the p50 (a long tail of stalls)."""
    t = np.asarray(timings_ms, dtype=np.float64)
    stats = stats or latency_stats(t)
    reasons = []
    if len(t) < MIN_RUNS_P90:
        reasons.append(f"p90 from {len(t)} runs (needs >= {MIN_RUNS_P90})")
    if len(t) < MIN_RUNS_P99:
        reasons.append(f"p99 from {len(t)} runs (needs >= {MIN_RUNS_P99})")
    mean = float(t.mean())
    cv = float(t.std()) / mean if mean > 0 else 0.0
    if cv > MAX_CV:
        reasons.append(f"noisy: coefficient of variation {cv:.2f} > {MAX_CV}")
    if stats["p50"] > 0 and stats["p99"] > MAX_TAIL * stats["p50"]:
        reasons.append(f"long tail: p99 is {stats['p99'] / stats['p50']:.1f}x p50 (> {MAX_TAIL:g}x)")
    return reasons


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class MemoryProbe:
    """Resident memory of this process around one result (Linux; None elsewhere).

    before: VmRSS just before the session is created. peak: the highest RSS from then
    on through the timed runs: the kernel's high-water mark VmHWM, reset at start by
    writing 5 to /proc/self/clear_refs; where that reset is refused, the largest of
    VmRSS samples after session creation, after the cold run and after the timed runs.
    delta = peak - before: what the session and its runs added (memory that earlier
    models freed may be reused, so it can underestimate a model measured later).
    """

    def __init__(self):
        self.before = self.peak = None
        self._hwm_reset = False

    def start(self):
        kb = _proc_status_kb("VmRSS")
        if kb is None:
            return
        self.before = self.peak = kb * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False

    def sample(self):
        kb = _proc_status_kb("VmRSS")
        if kb is not None and self.peak is not None:
            self.peak = max(self.peak, kb * 1024)

    def finish(self) -> tuple:
        """(before, peak, delta) in bytes, or Nones."""
        if self.before is None:
            return None, None, None
        self.sample()
        if self._hwm_reset:
            hwm = _proc_status_kb("VmHWM")
            if hwm is not None:
                self.peak = max(self.peak, hwm * 1024)
        return self.before, self.peak, self.peak - self.before


def evaluate(session, x_float: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of the model's first output (N, C) or (N, C, 1, 1)."""
    return topk_accuracy(predict(session, x_float, y, batch_size), y, 1)


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int) -> float | None:
    """Percent of rows whose label is among the k largest logits; None with fewer than k classes."""
    if logits.shape[1] < k:
        return None
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k > 1 else logits.argmax(axis=1)[:, None]
    return 100.0 * float((top == y[:, None]).any(axis=1).mean())


def predict(session, x_float: np.ndarray, y: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, C) of the model's first output for every image, batched."""
    if len(x_float) == 0 or len(y) != len(x_float):
        raise DataError(f"evaluation needs one label per image, got {len(x_float)} images and {len(y)} labels")
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch_size
    outputs = []
    for start in range(0, len(x_float), step):
        chunk = x_float[start : start + step]
        n = len(chunk)
        if fixed and n < fixed:  # a fixed batch dim: pad the last chunk, drop the padding's outputs
            pad = np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        logits = session.run(None, {inp.name: chunk})[0]
        outputs.append(logits.reshape(len(chunk), -1)[:n])
    return np.concatenate(outputs)


def _bench_one(path: Path, cfg: BenchConfig, eval_x, eval_y, op_cache: dict | None = None) -> BenchRow:
    """One model. Checked again here, just before its sessions (out of session_ms): a
    long benchmark of several models leaves time for a file to change after bench()'s check.
    op_cache: path -> op counts, so that a sweep over batch sizes and threads counts once."""
    check_onnx_file(path)
    memory = MemoryProbe()
    memory.start()
    start = time.perf_counter()
    session = make_session(path, cfg.provider, cfg.threads, check=False)
    session_ms = (time.perf_counter() - start) * 1000.0
    memory.sample()
    meta = session.get_modelmeta().custom_metadata_map

    inp = session.get_inputs()[0]
    dtype = _INPUT_TYPES.get(inp.type)
    if dtype is None:
        raise ModelFileError(
            f"'{path}' input '{inp.name}' is {inp.type}; only {', '.join(_INPUT_TYPES)} inputs can be benchmarked"
        )
    fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] > 0
    batch = inp.shape[0] if fixed_batch else cfg.batch_size
    shape = _feed_shape(inp, batch, None if eval_x is None else eval_x.shape, path)
    # Real images only for float32 inputs (what edgekd exports); others get random data.
    x = preprocess(eval_x, meta) if eval_x is not None and dtype == np.float32 else None
    feed_x = _synthetic(shape, dtype) if x is None else np.resize(x[:batch], shape)

    timings, first_run_ms = measure_latency(
        session, {inp.name: feed_x}, warmup=cfg.warmup, runs=cfg.runs, min_seconds=cfg.min_seconds
    )
    stats = latency_stats(timings)
    rss_before, rss_peak, rss_delta = memory.finish()  # before accuracy: it holds the whole eval set
    top1 = top5 = None
    if x is not None and eval_y is not None:
        logits = predict(session, x, eval_y)
        top1, top5 = topk_accuracy(logits, eval_y, 1), topk_accuracy(logits, eval_y, 5)

    op_cache = {} if op_cache is None else op_cache
    if path not in op_cache:
        op_cache[path] = optimized_op_counts(path, cfg.provider, cfg.threads, check=False)
    op_counts = op_cache[path]
    params = _meta_int(meta, "edgekd.params")
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
        macs=_meta_int(meta, "edgekd.macs"),
        file_bytes=path.stat().st_size,
        latency_ms=stats,
        runs=len(timings),
        warmup=cfg.warmup,
        throughput=batch / (stats["mean"] / 1000.0),
        session_ms=session_ms,
        first_run_ms=first_run_ms,
        op_counts=op_counts,
        int8_ops=None if op_counts is None else sum(c for op, c in op_counts.items() if op in INT8_OPS),
        qdq_nodes=None if op_counts is None else sum(c for op, c in op_counts.items() if op in QDQ_OPS),
        threads=cfg.threads,
        low_confidence=low_confidence(timings, stats),
        rss_before_bytes=rss_before,
        rss_peak_bytes=rss_peak,
        rss_delta_bytes=rss_delta,
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
          batch_sizes: list | None = None, threads: list | None = None) -> list:
    """Benchmark each model; with eval_set (an .npz path) also top-1 accuracy, else
    latency only, on the eval images or synthetic input.

    batch_sizes, threads: sweep these instead of cfg.batch_size / cfg.threads; one row
    per (model, batch size, threads), in that order. A model with a fixed batch dim
    gets one row per thread count."""
    cfg = cfg or BenchConfig()
    _resolve_provider(cfg.provider)  # a typo fails before any model is loaded
    configs = [
        dataclasses.replace(cfg, batch_size=b, threads=t)  # BenchConfig validates each
        for b in (batch_sizes or [cfg.batch_size])
        for t in (threads or [cfg.threads])
    ]
    paths = [Path(p) for p in paths]
    for path in paths:  # every file, before any session: a bad third model fails at once
        check_onnx_file(path)
    eval_x = eval_y = None
    if eval_set is not None:
        eval_x, eval_y, _ = load_eval_set(eval_set)
    rows, done, fixed_batch, op_cache = [], set(), {}, {}  # fixed_batch: path -> its fixed batch
    for path, run_cfg in _progress([(p, c) for p in paths for c in configs], progress):
        if (path, fixed_batch.get(path), run_cfg.threads) in done:
            continue  # a fixed batch dim: another batch size would repeat a row
        row = _bench_one(path, run_cfg, eval_x, eval_y, op_cache)
        if row.batch_size != run_cfg.batch_size:  # the model's batch dim is fixed
            fixed_batch[path] = row.batch_size
        if (path, row.batch_size, row.threads) not in done:
            done.add((path, row.batch_size, row.threads))
            rows.append(row)
    return rows


def bench_run_dir(run_dir, cfg: BenchConfig | None = None, progress: bool = True, **sweep) -> list:
    """Benchmark every *.onnx in a run directory (teacher first), with run_dir/eval.npz
    for accuracy when it exists."""
    run_dir = Path(run_dir)
    paths = sorted(run_dir.glob("*.onnx"), key=lambda p: (not p.name.startswith("teacher"), p.name))
    if not paths:
        raise ModelFileError(f"no .onnx files in '{run_dir}'; export models first or check the run directory")
    eval_set = run_dir / "eval.npz"
    return bench(paths, eval_set=eval_set if eval_set.is_file() else None, cfg=cfg, progress=progress, **sweep)


# -- reporting -----------------------------------------------------------------------


def _cpuinfo() -> dict:
    """First value of each key in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def machine_info() -> dict:
    cpuinfo = _cpuinfo()
    flags = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())
    cpu = cpuinfo.get("model name") or cpuinfo.get("Hardware") or cpuinfo.get("Model") or platform.processor()
    return {
        "cpu": cpu or platform.machine(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "int8_cpu_flags": [f for f in INT8_CPU_FLAGS if f in flags],
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


def _edgekd_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("edgekd")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return getattr(sys.modules.get(__package__), "__version__", None)


def to_json(rows: list, extra: dict | None = None, *, cfg: BenchConfig | None = None) -> dict:
    """The JSON report; `extra` entries are added at the top level."""
    report = {
        "schema": SCHEMA,
        "edgekd_version": _edgekd_version(),
        "machine": machine_info(),
        "config": None if cfg is None else dataclasses.asdict(cfg),
        "models": [row.to_dict() for row in rows],
    }
    report.update(extra or {})
    return report
