"""PROVIDERS, the registry of ONNX Runtime execution providers by short name (bench.provider,
`edgekd bench --provider`): each entry names ONNX Runtime's provider, the provider options
its sessions get, and how to install it when the onnxruntime in use lacks it.

A user's short name registers a Provider; it is then valid in recipes, on the command line
and in `edgekd bench --list-providers` (the recipe's `plugins:` list imports the module):

    from edgekd.runtime.providers import PROVIDERS, Provider

    PROVIDERS.register("cuda1", Provider(
        "CUDAExecutionProvider",
        options={"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"},
        hint="install onnxruntime-gpu in place of onnxruntime",
    ))

    # edgekd bench model.int8.onnx --provider cuda1

Needs no onnxruntime to import (recipes validate bench.provider against it); only
provider_list() asks onnxruntime which providers it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from edgekd.configtools import did_you_mean
from edgekd.errors import ConfigError
from edgekd.registry import Registry

GENERIC_HINT = "install an onnxruntime build that includes it"


@dataclass(frozen=True)
class Provider:
    """An execution provider under a short name: ONNX Runtime's name for it, the provider
    options passed with it to InferenceSession (values as strings, as ORT reads them), and
    how to get it when the installed onnxruntime lacks it."""

    ort_name: str
    hint: str = GENERIC_HINT
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.ort_name, str) or not self.ort_name.endswith("ExecutionProvider"):
            raise ValueError(f"a Provider needs ONNX Runtime's provider name (...ExecutionProvider), "
                             f"got {self.ort_name!r}")


PROVIDERS: Registry[Provider] = Registry("execution provider")

for _short, _ort_name, _hint in (
    ("cpu", "CPUExecutionProvider", GENERIC_HINT),
    ("cuda", "CUDAExecutionProvider",
     "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime && pip install onnxruntime-gpu)"),
    ("tensorrt", "TensorrtExecutionProvider", "install onnxruntime-gpu in place of onnxruntime and TensorRT"),
    ("openvino", "OpenVINOExecutionProvider",
     ("pip install onnxruntime-ep-openvino (the plugin; Intel CPUs, GPUs and NPUs) or onnxruntime-openvino in place "
      "of onnxruntime")),
    ("dnnl", "DnnlExecutionProvider", "build onnxruntime from source with --use_dnnl"),
    ("xnnpack", "XnnpackExecutionProvider",
     "use the onnxruntime-android package or build onnxruntime with --use_xnnpack"),
    ("acl", "ACLExecutionProvider", "build onnxruntime from source with --use_acl (Arm Compute Library)"),
    ("armnn", "ArmNNExecutionProvider", "build onnxruntime from source with --use_armnn"),
    ("nnapi", "NnapiExecutionProvider", "use the onnxruntime-android package (Android only)"),
    ("coreml", "CoreMLExecutionProvider", "use the onnxruntime wheel for macOS, which includes it (macOS only)"),
    ("qnn", "QNNExecutionProvider", "install onnxruntime-qnn in place of onnxruntime"),
    ("dml", "DmlExecutionProvider", "install onnxruntime-directml in place of onnxruntime"),
    ("migraphx", "MIGraphXExecutionProvider", "build onnxruntime from source with --use_migraphx (AMD ROCm)"),
    ("nv-tensorrt-rtx", "NvTensorRTRTXExecutionProvider", "pip install onnxruntime-ep-nv-tensorrt-rtx (a plugin)"),
    ("webgpu", "WebGpuExecutionProvider", "pip install onnxruntime-ep-webgpu (a plugin)"),
):
    PROVIDERS.register(_short, Provider(_ort_name, hint=_hint))
del _short, _ort_name, _hint


def resolve_provider(name: str) -> str:
    """ONNX Runtime's name for `name`: a registered short name, an ONNX Runtime provider
    name (...ExecutionProvider) itself, or the id of an installed plugin package
    (onnxruntime-ep-ID, its first EP). Anything else is a ConfigError listing the short names."""
    if name in PROVIDERS:
        return PROVIDERS.get(name).ort_name
    if isinstance(name, str) and name.endswith("ExecutionProvider"):
        return name
    plugin_ep = _plugin_ep_for_id(name) if isinstance(name, str) else None
    if plugin_ep is not None:
        return plugin_ep
    raise ConfigError(f"unknown provider '{name}'{did_you_mean(name, PROVIDERS.names())}; known: "
                      f"{', '.join(PROVIDERS.names())} (or an ONNX Runtime provider name such as CPUExecutionProvider)")


def _plugin_ep_for_id(name: str) -> str | None:
    """The first EP name of the installed plugin package onnxruntime-ep-NAME (imports its
    module, which needs no onnxruntime), or None."""
    import importlib

    from edgekd.runtime.plugins import ep_names_of, package_for_name

    package = package_for_name(name)
    if package is None:
        return None
    try:
        names = ep_names_of(importlib.import_module(package.module))
    except Exception:  # noqa: BLE001 - a broken package: not a provider name
        return None
    return names[0] if names else None


def provider_options(name: str) -> dict:
    """The provider options of a registered short name ({} for an ONNX Runtime name)."""
    return dict(PROVIDERS.get(name).options) if name in PROVIDERS else {}


def short_names(ort_name: str) -> list[str]:
    """The registered short names of an ONNX Runtime provider, in registration order."""
    return [short for short in PROVIDERS if PROVIDERS.get(short).ort_name == ort_name]


def install_hint(name: str) -> str:
    """How to get the provider `name` (a short name, else an ONNX Runtime name)."""
    if name in PROVIDERS:
        return PROVIDERS.get(name).hint
    shorts = short_names(name)
    return PROVIDERS.get(shorts[0]).hint if shorts else GENERIC_HINT


@lru_cache(maxsize=1)
def runtime_package() -> str:
    """'onnxruntime 1.32.0': the distribution that brings the onnxruntime module (onnxruntime,
    onnxruntime-gpu, onnxruntime-openvino, ...)."""
    import importlib.metadata

    import onnxruntime as ort

    names = importlib.metadata.packages_distributions().get("onnxruntime") or ["onnxruntime"]
    return f"{names[0]} {ort.__version__}"


# Built into some onnxruntime wheels, but it sends requests to a remote endpoint: not a provider to bench.
NOT_BENCHED = frozenset({"AzureExecutionProvider"})


def provider_list() -> list[dict]:
    """The providers of the installed onnxruntime, then those of installed plugin packages
    (onnxruntime-ep-*), then the registered ones neither brings, with how to get them: dicts
    with short (None for a provider no short name is registered for; --provider then takes
    the ORT name), ort_name, available, hint, kind ('built-in', 'plugin' or None), package
    (the distribution and version that brings it) and devices (a plugin's, described). A
    provider with several short names is listed once per name. A plugin that offers no
    device here is listed as unavailable with the reason."""
    import onnxruntime as ort

    from edgekd.runtime.plugins import describe_device, no_device_reason, plugin_states

    available = ort.get_available_providers()
    runtime = runtime_package()
    out, seen = [], set(available)
    for ep in available:
        out += [{"short": short, "ort_name": ep, "available": True, "hint": None, "kind": "built-in",
                 "package": runtime, "devices": None} for short in short_names(ep) or [None]]
    for state in plugin_states():
        for ep in state.ep_names or [None]:
            if ep in seen:
                continue  # the built-in one is used first (edgekd.runtime.session.make_session)
            seen.add(ep)
            devices = [describe_device(d) for d in state.devices.get(ep, [])]
            hint = None if devices else f"no device on this machine: {no_device_reason(state)}"
            out += [{"short": short, "ort_name": ep, "available": bool(devices), "hint": hint, "kind": "plugin",
                     "package": state.package.label, "devices": devices}
                    for short in (short_names(ep) if ep else []) or [state.package.short]]
    for short in PROVIDERS:
        entry = PROVIDERS.get(short)
        if entry.ort_name not in seen:
            out.append({"short": short, "ort_name": entry.ort_name, "available": False, "hint": entry.hint,
                        "kind": None, "package": None, "devices": None})
    return out


def installed_providers() -> tuple[list, list]:
    """(names, skipped) for `--provider all`: one name per provider that can run here (a
    short name where one is registered, else the ONNX Runtime name), built-in ones first;
    skipped: 'NAME: why' for installed plugins without a device."""
    names, skipped = [], []
    for entry in provider_list():
        if entry["kind"] is None or entry["ort_name"] in NOT_BENCHED:
            continue
        name = entry["short"] or entry["ort_name"]
        if any(resolve_provider(n) == entry["ort_name"] for n in names):
            continue  # one name per provider
        if entry["available"]:
            names.append(name)
        elif entry["kind"] == "plugin":
            skipped.append(f"{name} ({entry['package']}): {entry['hint']}")
    return names, skipped


MAX_PROVIDERS = 16  # in one --provider list


def expand_providers(text: str) -> tuple[list, list]:
    """--provider's value -> (names, skipped): one name, a comma list ('cpu,openvino'), or
    'all' (installed_providers). Unknown or repeated names are a ConfigError (exit 2)."""
    if str(text).strip() == "all":
        return installed_providers()
    names = [n.strip() for n in str(text).split(",")]
    if not all(names):
        raise ConfigError(f"--provider: expected a name, a comma list of names or 'all', got {str(text)[:60]!r}")
    if len(names) > MAX_PROVIDERS:
        raise ConfigError(f"--provider: at most {MAX_PROVIDERS} providers, got {len(names)}")
    for name in names:
        resolve_provider(name)
        if names.count(name) > 1:  # two registered names of one EP (different options) are fine
            raise ConfigError(f"--provider: '{name}' is given twice")
    return names, []
