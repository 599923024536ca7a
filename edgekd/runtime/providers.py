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
    ("openvino", "OpenVINOExecutionProvider", "install onnxruntime-openvino in place of onnxruntime"),
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
):
    PROVIDERS.register(_short, Provider(_ort_name, hint=_hint))
del _short, _ort_name, _hint


def resolve_provider(name: str) -> str:
    """ONNX Runtime's name for `name`: a registered short name, or an ONNX Runtime provider
    name (...ExecutionProvider) itself. Anything else is a ConfigError listing the short names."""
    if name in PROVIDERS:
        return PROVIDERS.get(name).ort_name
    if isinstance(name, str) and name.endswith("ExecutionProvider"):
        return name
    raise ConfigError(f"unknown provider '{name}'; known: {', '.join(PROVIDERS.names())} "
                      "(or an ONNX Runtime provider name such as CPUExecutionProvider)")


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


def provider_list() -> list[dict]:
    """The providers of the installed onnxruntime, then the registered ones it lacks with
    how to get them: dicts with short (None for a provider no short name is registered
    for; --provider then takes the ORT name), ort_name, available, hint. A provider with
    several short names is listed once per name."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    out = []
    for ep in available:
        out += [{"short": short, "ort_name": ep, "available": True, "hint": None}
                for short in short_names(ep) or [None]]
    for short in PROVIDERS:
        entry = PROVIDERS.get(short)
        if entry.ort_name not in available:
            out.append({"short": short, "ort_name": entry.ort_name, "available": False, "hint": entry.hint})
    return out
