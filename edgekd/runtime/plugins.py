"""Plugin execution providers: ONNX Runtime EPs shipped as their own Python packages
(`onnxruntime-ep-openvino`, `onnxruntime-ep-nv-tensorrt-rtx-cu13`, ...), loaded with
onnxruntime.register_execution_provider_library and attached to a session through one of
the devices ONNX Runtime lists for them (get_ep_devices, SessionOptions.add_provider_for_devices).

A package is found by its distribution name, `onnxruntime-ep-<id>`, and read through the
helpers ONNX Runtime's packaging guidance asks every plugin package for:
`get_library_path()` and `get_ep_names()` (or `get_ep_name()`). Packages without them
(a meta-package that only pulls in the real one) are skipped.

Nothing here runs at import: the installed distributions are read, and onnxruntime is
imported, only when a plugin provider is listed or asked for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass, field
from functools import lru_cache

from edgekd.errors import ProviderUnavailable, first_line

PREFIX = "onnxruntime-ep-"

DEVICE_OPTION = "device_type"  # a provider option that picks among a plugin's devices; consumed here

REGISTRATION_PREFIX = "edgekd-"

_registered: dict = {}  # distribution name -> ep names, once registered in this process


@dataclass(frozen=True)
class PluginPackage:
    """An installed onnxruntime-ep-* distribution that has an importable module."""

    distribution: str  # "onnxruntime-ep-openvino"
    version: str
    module: str  # "onnxruntime_ep_openvino"

    @property
    def short(self) -> str:
        """The part after onnxruntime-ep-: a name --provider accepts ("openvino")."""
        return self.distribution[len(PREFIX):]

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"


@dataclass
class PluginState:
    """What registering a package gave: its EP names and, per EP, ONNX Runtime's devices."""

    package: PluginPackage
    ep_names: list = field(default_factory=list)
    devices: dict = field(default_factory=dict)  # ep name -> [OrtEpDevice]
    error: str | None = None  # why it could not be registered


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _module_name(dist) -> str | None:
    """The distribution's top-level module: top_level.txt, else its one package folder."""
    text = dist.read_text("top_level.txt") or ""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        names = sorted({str(f).split("/")[0] for f in dist.files or [] if str(f).endswith("/__init__.py")
                        and str(f).count("/") == 1})
    return names[0] if names else None


@lru_cache(maxsize=1)
def plugin_packages() -> tuple:
    """The installed onnxruntime-ep-* distributions with a module, sorted by name (read once)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = _normalized(dist.metadata["Name"] or "")
        if not name.startswith(PREFIX) or name in found:
            continue
        module = _module_name(dist)
        if module is not None:
            found[name] = PluginPackage(name, dist.version, module)
    return tuple(found[k] for k in sorted(found))


def package_for_name(name: str) -> PluginPackage | None:
    """The installed package whose id (after onnxruntime-ep-) is `name`, if any."""
    wanted = _normalized(name)
    return next((p for p in plugin_packages() if p.short == wanted), None)


def ep_names_of(module) -> list:
    """The EP names a plugin module declares (get_ep_names, else get_ep_name)."""
    if hasattr(module, "get_ep_names"):
        return [str(n) for n in module.get_ep_names()]
    if hasattr(module, "get_ep_name"):
        return [str(module.get_ep_name())]
    return []


def register(package: PluginPackage) -> PluginState:
    """Register the package's library with ONNX Runtime (once per process) and list the
    devices it offers. Failures are kept in PluginState.error, not raised: listing
    providers must not stop at one broken package."""
    import onnxruntime as ort

    state = PluginState(package)
    try:
        module = importlib.import_module(package.module)
        state.ep_names = ep_names_of(module)
        if package.distribution not in _registered:
            try:
                ort.register_execution_provider_library(REGISTRATION_PREFIX + package.short, module.get_library_path())
            except Exception as exc:  # ORT's errors share no base class but Exception
                if "already registered" not in str(exc):  # by the user's own code, under our name
                    raise
            _registered[package.distribution] = state.ep_names
    except Exception as exc:  # noqa: BLE001 - an import error, a missing helper or library, an ABI mismatch
        state.error = first_line(exc)
        return state
    all_devices = ort.get_ep_devices()
    state.devices = {ep: [d for d in all_devices if d.ep_name == ep] for ep in state.ep_names}
    return state


def plugin_states() -> list:
    """Every installed plugin package, registered, with its devices (for --list-providers)."""
    return [register(p) for p in plugin_packages()]


def plugin_for_ep(ep_name: str) -> PluginState | None:
    """The registered plugin package that brings `ep_name`, if one is installed."""
    for package in plugin_packages():
        state = register(package)
        if ep_name in state.ep_names:
            return state
    return None


def describe_device(device) -> str:
    """'CPU (AMD)' or 'GPU (Intel, ov_device=GPU.0)': the device's type, vendor and the
    plugin's own metadata."""
    kind = str(device.device.type).rsplit(".", 1)[-1]
    extra = ", ".join(f"{k}={v}" for k, v in dict(device.ep_metadata).items() if k != "version")
    return f"{kind} ({device.device.vendor}{', ' + extra if extra else ''})"


def pick_device(state: PluginState, ep_name: str, wanted: str | None):
    """The device a session of `ep_name` runs on: the first that ONNX Runtime lists, or the
    one whose type (CPU, GPU, NPU) or plugin metadata value matches `wanted` (the
    provider option device_type). ProviderUnavailable when there is none."""
    devices = state.devices.get(ep_name, [])
    if not devices:
        raise ProviderUnavailable(
            f"{state.package.label} brings {ep_name} but offers no device on this machine "
            f"({no_device_reason(state)}); use another provider or run on hardware it supports"
        )
    if wanted is None:
        return devices[0]
    for device in devices:
        kind = str(device.device.type).rsplit(".", 1)[-1]
        if wanted.upper() in {kind.upper(), *(str(v).upper() for v in dict(device.ep_metadata).values())}:
            return device
    raise ProviderUnavailable(
        f"{ep_name} ({state.package.label}) has no device '{wanted}' here; it offers: "
        f"{', '.join(describe_device(d) for d in devices)}"
    )


def no_device_reason(state: PluginState) -> str:
    """Why a registered plugin lists no device: OpenVINO's plugin offers Intel hardware only."""
    if state.error:
        return f"it could not be loaded: {state.error}"
    try:
        import onnxruntime as ort

        cpu = next(d for d in ort.get_ep_devices() if d.ep_name == "CPUExecutionProvider")
        vendor = f"this CPU's vendor is {cpu.device.vendor}"
    except Exception:  # noqa: BLE001 - no CPU device listed, or an ORT without device details
        vendor = "no supported hardware found"
    if state.package.short == "openvino":
        return f"the OpenVINO plugin offers Intel CPUs, GPUs and NPUs only; {vendor}"
    return vendor


def add_plugin_provider(options, state: PluginState, ep_name: str, provider_options: dict) -> str:
    """Attach `ep_name` on its device to SessionOptions `options` (ORT adds the CPU
    provider after it for the nodes it does not take). Returns the device's description."""
    provider_options = dict(provider_options)
    device = pick_device(state, ep_name, provider_options.pop(DEVICE_OPTION, None))
    options.add_provider_for_devices([device], {k: str(v) for k, v in provider_options.items()})
    return describe_device(device)
