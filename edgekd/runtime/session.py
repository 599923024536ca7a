"""Every ONNX Runtime session edgekd creates. For `edgekd bench` (make_session): sessions
that must really run on the provider asked for (a short name of
edgekd.runtime.providers.PROVIDERS, with its provider options), with the benchmark's thread
and spinning options, and what the session does with the graph: op types after
optimization, int8 kernels, and the nodes each provider ran. For edgekd's own work
(cpu_session): plain CPU sessions with the few options each caller sets.

Needs only onnxruntime and numpy (onnx optional), like the rest of the bench path.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekd.errors import (
    ConfigError,
    ModelFileError,
    ProviderFailed,
    ProviderUnavailable,
    first_line,
)
from edgekd.io import onnxfile
from edgekd.io.onnxfile import check_onnx_file
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.measure import provider_node_counts
from edgekd.runtime.plugins import (
    DEVICE_OPTION,
    add_plugin_provider,
    pick_device,
    plugin_for_ep,
)
from edgekd.runtime.providers import install_hint, resolve_provider, short_names
from edgekd.runtime.providers import provider_options as provider_options_of
from edgekd.runtime.session_options import GRAPH_OPTIMIZATION, options_for

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


DEFAULT_TARGET = BenchConfig()  # the CPU provider with ONNX Runtime's default threads and options


def make_session(path, target: BenchConfig | None = None, *, check: bool = True, optimized_path=None,
                 profile_prefix=None):
    """An InferenceSession deployed as `target` says: its provider, threads and session
    options (a BenchConfig's; None: the CPU provider with ONNX Runtime's defaults). The
    provider (a registered short name, whose provider options it passes, an ONNX Runtime
    provider name, or an installed plugin's id) must really be the one used.

    Every session edgekd creates on a model file comes from here, and the file passes
    check_onnx_file first (external data inside the model's folder, onnx.checker).
    A provider built into the installed onnxruntime is used as such; otherwise an installed
    plugin package that brings it is registered and its device picked (edgekd.runtime.plugins).
    optimized_path: where ORT writes the optimised graph (used for the int8 op counts).
    check: False only right after check_onnx_file(path) has passed, to skip repeating it.
    profile_prefix: enable ORT's profiler, writing there. Of the target: inter_threads > 0
    switches to the parallel execution mode (ORT uses inter-op threads only there);
    intra_spinning / inter_spinning set the session.*.allow_spinning options (None: ORT's
    default); provider_options (plain and 'PROVIDER:KEY' entries, see
    session_options.options_for) go over the registered ones; session_config: config
    entries; graph_optimization: a key of session_options.GRAPH_OPTIMIZATION.
    """
    target = target or DEFAULT_TARGET
    provider, threads, provider_options = target.provider, target.threads, target.provider_options
    ep = resolve_provider(provider)
    plugin = None if ep in ort.get_available_providers() else plugin_for_ep(ep)
    if plugin is None:
        check_provider_available(provider, provider_options)
    if check:
        check_onnx_file(path)
    options = ort.SessionOptions()
    level = GRAPH_OPTIMIZATION[target.graph_optimization]
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads > 0:
        options.intra_op_num_threads = threads
    if target.inter_threads > 0:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = target.inter_threads
    for key, value in (target.session_config or {}).items():
        options.add_session_config_entry(key, value)
    for key, value in (("session.intra_op.allow_spinning", target.intra_spinning),
                       ("session.inter_op.allow_spinning", target.inter_spinning)):
        if value is not None:
            options.add_session_config_entry(key, "1" if value else "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3  # ORT warns that NCHWc graphs are machine specific; known
    options_of_ep = {**provider_options_of(provider), **options_for(provider, provider_options or {})}
    if plugin is not None:
        add_plugin_provider(options, plugin, ep, options_of_ep)  # ORT adds the CPU provider after it
        providers = None
    else:
        # CPU stays in the list so ops the accelerator lacks still run.
        asked = (ep, options_of_ep) if options_of_ep else ep
        providers = [asked] if ep == "CPUExecutionProvider" else [asked, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT's exception classes share no common base but Exception
        raise ProviderFailed(
            f"ONNX Runtime cannot load '{path}' with {provider}: {first_line(exc)}; "
            "re-export the model or try another provider"
        ) from exc
    used = session.get_providers()
    if used[0] != ep:  # ORT falls back to CPU silently when a provider fails to start
        raise ProviderUnavailable(
            f"onnxruntime has {ep} but could not start it for '{path}' and fell back to {used[0]}; "
            "check that the provider's drivers and libraries are installed"
        )
    return session


def cpu_options(*, threads: int | None = None, graph_optimization: str | None = None,
                log_severity: int | None = None):
    """SessionOptions for edgekd's own CPU work (not bench's): ONNX Runtime's defaults except
    what is given: intra-op threads (0: ORT's default), graph_optimization (a key of
    session_options.GRAPH_OPTIMIZATION) and the log severity."""
    options = ort.SessionOptions()
    if graph_optimization is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization])
    if threads is not None:
        options.intra_op_num_threads = threads
    if log_severity is not None:
        options.log_severity_level = log_severity
    return options


def cpu_session(model, **settings):
    """An InferenceSession on the CPU provider alone for edgekd's own work (a model's inputs,
    calibration, the export parity check, an opset probe): `model` is a file's path or a
    serialized model; settings: cpu_options'. The caller checks a file that needs it
    (check_onnx_file) and handles ONNX Runtime's errors."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, cpu_options(**settings), providers=["CPUExecutionProvider"])


def check_provider_available(provider: str, provider_options: dict | None = None) -> None:
    """ProviderUnavailable (exit 2) unless `provider` can run here: built into the installed
    onnxruntime, or brought by an installed plugin package that offers a device (the one
    provider option device_type names, if given)."""
    ep = resolve_provider(provider)
    available = ort.get_available_providers()
    if ep in available:
        return
    plugin = plugin_for_ep(ep)
    if plugin is not None:
        pick_device(plugin, ep, options_for(provider, provider_options or {}).get(DEVICE_OPTION))  # or raises
        return
    names = ", ".join((short_names(p) or [p])[0] for p in available)
    raise ProviderUnavailable(
        f"execution provider '{provider}' ({ep}) is not in this onnxruntime {ort.__version__} "
        f"(available: {names}); {install_hint(provider)}"
    )


def provider_route(provider: str, provider_options: dict | None = None) -> dict:
    """How `provider` runs here: {"kind": "built-in" | "plugin", "package": the distribution
    and version that brings it, "device": the plugin device's description, or None}."""
    from edgekd.runtime.plugins import describe_device
    from edgekd.runtime.providers import runtime_package

    ep = resolve_provider(provider)
    plugin = None if ep in ort.get_available_providers() else plugin_for_ep(ep)
    if plugin is None:
        check_provider_available(provider)  # neither built in nor a plugin: ProviderUnavailable
        return {"kind": "built-in", "package": runtime_package(), "device": None}
    device = pick_device(plugin, ep, options_for(provider, provider_options or {}).get(DEVICE_OPTION))
    return {"kind": "plugin", "package": plugin.package.label, "device": describe_device(device)}


def optimized_op_counts(path, target: BenchConfig | None = None, *, check: bool = True) -> dict | None:
    """op_type -> count in the graph ORT actually runs on `target` (as for make_session);
    None without onnx or when the provider compiles nodes that ORT cannot save (TensorRT,
    OpenVINO, ...). check: as for make_session."""
    onnx = onnxfile._onnx()
    if onnx is None:
        return None
    if check:
        check_onnx_file(path)  # here, so that a bad file is an error, not "no op counts"
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        try:
            make_session(path, target, optimized_path=optimized, check=False)
        except (ModelFileError, ProviderUnavailable):
            return None
        if not optimized.is_file():  # a compiling provider (a plugin) may write nothing
            return None
        graph = onnx.load(str(optimized), load_external_data=False).graph
        return dict(Counter(node.op_type for node in graph.node))


def providers_per_node(path, cfg: BenchConfig, feed: dict, *, check: bool = True) -> dict:
    """Execution provider -> number of nodes it ran, from one profiled run of `feed` on
    a session like the benchmark's (see edgekd.runtime.measure.provider_node_counts)."""
    if check:
        check_onnx_file(path)
    with tempfile.TemporaryDirectory(prefix="edgekd-profile-") as tmp:
        session = make_session(path, cfg, check=False, profile_prefix=Path(tmp) / "profile")
        session.run(None, feed)
        return provider_node_counts(session.end_profiling())


def count_params(path) -> int | None:
    """Elements in the graph initializers; None without onnx."""
    onnx = onnxfile._onnx()
    if onnx is None:
        return None
    graph = onnx.load(str(path), load_external_data=False).graph  # dims suffice, not the data
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


def check_session_options(cfg, where: str = "bench") -> None:
    """Whether ONNX Runtime accepts a BenchConfig's session config, provider options, graph
    optimization and threads: a session is created, with the function and the arguments the
    bench stage uses (make_session), on a one-node model. A value ONNX
    Runtime refuses is a ConfigError with its message, before any model is trained; an
    unavailable provider is ProviderUnavailable (exit 2) as in bench."""
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from onnx import TensorProto, helper, save

    from edgekd.configtools import clip, shown
    from edgekd.errors import ProviderFailed

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"], name="identity")], "check",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with tempfile.TemporaryDirectory(prefix="edgekd-session-") as work:
        path = Path(work) / "identity.onnx"
        save(model, str(path))
        try:  # ORT's Python layer prints its provider fallback on stdout: not ours to show
            with contextlib.redirect_stdout(io.StringIO()):
                make_session(path, cfg)
        except ProviderFailed as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            given = [f"{where}.{k} {shown(getattr(cfg, k))}" for k in ("session_config", "provider_options")
                     if getattr(cfg, k)]
            raise ConfigError(clip(f"ONNX Runtime refuses {' and '.join(given) or f'the {where} session options'} "
                                   f"on provider {cfg.provider}: {_ort_reason(cause)}; fix or remove "
                                   "the entry")) from None


def _ort_reason(exc: BaseException) -> str:
    """ORT's message, one line, without the C++ source location and failed condition that some
    start with ('/onnxruntime_src/...cc:71 std::vector<...> f(...) cond was false. Processor id ...')."""
    import re

    match = re.match(r"\S+\.(?:cc|cpp|h):\d+ .*? was false\. (.+)", (str(exc).strip().splitlines() or [""])[0])
    reason = match[1][:200] if match else first_line(exc)
    if reason in ("stoi", "stol", "stoll", "stoul", "stoull"):  # C++'s number parsing failed on a value
        reason += " (a value it reads as a whole number is not one)"
    return reason
