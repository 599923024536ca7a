"""How much memory this process may still take: the one reader of /proc/meminfo, the cgroup
limits and RLIMIT_AS, and the one format of "this would not fit" errors.

The memory available is the smallest of what is known:

- MemAvailable of /proc/meminfo (the host's, or a container's view of it);
- every cgroup this process is in (v2: memory.max - memory.current; v1: memory.limit_in_bytes
  - memory.usage_in_bytes), at its own level and every parent level up to the mount, since a
  parent's limit binds its children too; the page cache the kernel can drop first
  (inactive_file of memory.stat) is not counted as used;
- the address space left under RLIMIT_AS (`ulimit -v`): the soft limit - VmSize of
  /proc/self/status;
- EDGEKD_MEMORY_LIMIT (bytes, or with K, M, G, T: "512M"), for operators who share a machine
  and for tests: it can only lower the budget, never raise it.

memory_budget() is half of that (one array, one batch, one cache may take it); check_memory()
refuses (exit 2, one line) anything estimated over it, with the estimate, the budget, what limits
it and the setting to change. Standard library only: `edgekd bench` on a device uses it.
"""

from __future__ import annotations

import os
import re

from edgekd.errors import ConfigError, DataError

ENV_LIMIT = "EDGEKD_MEMORY_LIMIT"
UNKNOWN_MEMORY = 8 * 1024**3  # assumed available when nothing says
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as 2^63 - 1 rounded to a page; v2 writes "max"

# the files read, module constants so that tests can point them at fakes
MEMINFO = "/proc/meminfo"
SELF_CGROUP = "/proc/self/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
SELF_STATUS = "/proc/self/status"

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _number(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _kib_field(text: str | None, key: str) -> int | None:
    """`key: <n> kB` of a /proc file, in bytes."""
    match = re.search(rf"^{re.escape(key)}:\s+(\d+)", text or "", re.M)
    return int(match.group(1)) * 1024 if match else None


def meminfo_available() -> int | None:
    return _kib_field(_read(MEMINFO), "MemAvailable")


def _cgroup_mounts(controller: str = "memory") -> list:
    """[(version, root inside the hierarchy, mount point)] of the `controller`'s cgroup mounts."""
    mounts = []
    for line in (_read(MOUNTINFO) or "").splitlines():
        before, sep, after = line.partition(" - ")
        fields, post = before.split(), after.split()
        if not sep or len(fields) < 5 or len(post) < 3:
            continue
        # mountinfo escapes spaces and the like as octal (\040)
        root, point = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f) for f in fields[3:5])
        if post[0] == "cgroup2":
            mounts.append((2, root, point))
        elif post[0] == "cgroup" and controller in post[2].split(","):
            mounts.append((1, root, point))
    return mounts


def _own_cgroups(controller: str = "memory") -> dict:
    """{1: path in the v1 `controller` hierarchy, 2: path in the v2 hierarchy} from /proc/self/cgroup."""
    found = {}
    for line in (_read(SELF_CGROUP) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            found[2] = parts[2]
        elif controller in parts[1].split(","):
            found[1] = parts[2]
    return found


def cgroup_dirs(controller: str) -> list:
    """[(version, directory)]: every level of this process's cgroups for `controller` (v1) and
    of its v2 cgroup, own level first, each parent's up to the mount (a parent's limit binds
    its children too). edgekd.train.threads reads the CPU quota from them."""
    own = _own_cgroups(controller)
    return [(version, d) for version, root, point in _cgroup_mounts(controller) if version in own
            for d in _levels(point, root, own[version])]


def _levels(point: str, root: str, path: str) -> list:
    """The cgroup's directory and each parent's up to the mount point. Inside a container the
    path may name the host's hierarchy, which the mount does not show: then the mount's own
    directory is the cgroup."""
    rel = os.path.relpath(path, root) if path.startswith(root) else "."
    leaf = os.path.normpath(os.path.join(point, rel))
    if rel.startswith("..") or not os.path.isdir(leaf):
        leaf = point
    levels = [leaf]
    while levels[-1] != point and len(levels) < 64:
        levels.append(os.path.dirname(levels[-1]))
    return levels


def _inactive_file(directory: str, key: str) -> int:
    match = re.search(rf"^{key} (\d+)", _read(os.path.join(directory, "memory.stat")) or "", re.M)
    return int(match.group(1)) if match else 0


def _headroom(version: int, directory: str) -> int | None:
    """Bytes left under one cgroup level's limit (None: no limit there, or unreadable)."""
    if version == 2:
        limit_text = _read(os.path.join(directory, "memory.max"))
        limit = None if limit_text is None or limit_text.strip() == "max" else _number(limit_text)
        used = _number(_read(os.path.join(directory, "memory.current")))
        reclaimable = _inactive_file(directory, "inactive_file")
    else:
        limit = _number(_read(os.path.join(directory, "memory.limit_in_bytes")))
        used = _number(_read(os.path.join(directory, "memory.usage_in_bytes")))
        reclaimable = _inactive_file(directory, "total_inactive_file")
    if limit is None or limit >= UNLIMITED:
        return None
    return max(0, limit - max(0, (used or 0) - reclaimable))


def cgroup_headroom() -> dict:
    """{"cgroup v1" / "cgroup v2": bytes left under the tightest level's limit}; empty without limits."""
    own, found = _own_cgroups(), {}
    for version, root, point in _cgroup_mounts():
        if version not in own:
            continue
        left = [h for h in (_headroom(version, d) for d in _levels(point, root, own[version])) if h is not None]
        if left:
            found[f"cgroup v{version}"] = min(left + [found.get(f"cgroup v{version}", UNLIMITED)])
    return found


def address_space_headroom() -> int | None:
    """RLIMIT_AS's soft limit minus this process's address space now (VmSize); None unlimited."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    size = _kib_field(_read(SELF_STATUS), "VmSize") or 0
    return max(0, soft - size)


def env_limit() -> int | None:
    """EDGEKD_MEMORY_LIMIT in bytes (None when unset); ConfigError when it is not a size."""
    value = os.environ.get(ENV_LIMIT, "").strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", value, re.I)
    if not match:
        raise ConfigError(f"{ENV_LIMIT}={value[:40]!r} is not a size; use bytes or a number with K, M, G or T "
                          "(for example 4G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_sources() -> dict:
    """{what limits memory: bytes available under it}, for every source that says something."""
    sources = {"MemAvailable": meminfo_available(), **cgroup_headroom(),
               "RLIMIT_AS (ulimit -v)": address_space_headroom(), ENV_LIMIT: env_limit()}
    return {name: value for name, value in sources.items() if value is not None}


def available_memory() -> int | None:
    """The memory this process can still take: the smallest of memory_sources() (None: unknown)."""
    sources = memory_sources()
    return min(sources.values()) if sources else None


def memory_budget() -> int:
    """Bytes one array, batch or cache may take: half of available_memory(), or half of
    UNKNOWN_MEMORY where nothing says."""
    return _half(memory_sources())


def _half(sources: dict) -> int:
    return (min(sources.values()) if sources else UNKNOWN_MEMORY) // 2


def size_text(nbytes: int) -> str:
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


def over_budget(nbytes: int, what: str, hint: str, budget: int | None = None) -> str | None:
    """The one-line refusal when `nbytes` for `what` exceed `budget` (memory_budget() when
    None), naming the estimate, the budget, what limits it and `hint` (the setting to change);
    None when it fits."""
    sources = memory_sources()
    budget = _half(sources) if budget is None else budget
    if nbytes <= budget:
        return None
    limit = (f"limited by {min(sources, key=sources.get)}" if sources else
             f"nothing says how much: {size_text(UNKNOWN_MEMORY)} assumed; {ENV_LIMIT} sets it")
    return (f"{what} would take {size_text(nbytes)}, more than the memory budget of {size_text(budget)} "
            f"(half of the memory available, {limit}); {hint}")


def check_memory(nbytes: int, what: str, hint: str, error=DataError) -> None:
    """`error` (a BadInput: exit 2) before `nbytes` are allocated for `what` when they exceed
    memory_budget(); `hint` says which setting to change."""
    message = over_budget(nbytes, what, hint)
    if message is not None:
        raise error(message)
