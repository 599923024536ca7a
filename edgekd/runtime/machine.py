"""What machine this is: the one reader of /proc/cpuinfo, for bench reports and for the
int8 presets that quantize.target 'auto' picks from the CPU flags; the memory available
comes from edgekd.io.membudget."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# CPU features that make int8 kernels fast: x86 VNNI / AMX, Arm dot-product and matrix multiply
INT8_CPU_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "dotprod", "i8mm")


def cpuinfo() -> dict:
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


def cpu_flags(info: dict | None = None) -> set[str]:
    """The CPU's feature flags: x86 'flags', Arm 'Features'."""
    info = cpuinfo() if info is None else info
    return set((info.get("flags") or info.get("Features") or "").split())


def detect_machine() -> dict:
    """This machine's architecture and CPU flags, as the int8 presets read them."""
    return {"arch": platform.machine(), "flags": sorted(cpu_flags())}


def machine_info() -> dict:
    """The machine a benchmark ran on, for reports."""
    import onnxruntime as ort

    info = cpuinfo()
    flags = cpu_flags(info)
    cpu = info.get("model name") or info.get("Hardware") or info.get("Model") or platform.processor()
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


def edgekd_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("edgekd")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return getattr(sys.modules.get("edgekd"), "__version__", None)


def available_memory_bytes() -> int | None:
    """The memory this process can still take, in bytes (None where nothing says): the
    smallest of MemAvailable, the cgroup limits and RLIMIT_AS (edgekd.io.membudget)."""
    from edgekd.io.membudget import available_memory

    return available_memory()
