"""Files that survive crashes: atomic writes, and weights that never unpickle code.

Every artifact is written to a temporary file in the destination folder, flushed to
disk, then renamed over the final name, so a crash, a second Ctrl-C or a full disk leaves
the previous version intact. Weights are safetensors; .pt/.pth files from users and the
per-epoch training checkpoints are read with torch.load(weights_only=True), which refuses
pickled code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

from edgekd.configtools import MAX_MESSAGE, clip
from edgekd.errors import ModelFileError, first_line


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is fsynced and renamed to
    `final`, on any error it is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and exc.filename in (None, str(tmp_path)):
            # name the file the user knows, not the temporary one (which is removed below)
            raise OSError(errno.ENOSPC, exc.strerror or "No space left on device", str(final)) from exc
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(final: str | Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | Path, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_weights(model, path: str | Path) -> Path:
    """Save a model's state_dict as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(state))


SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the safetensors library's own limit


SAFETENSORS_DTYPES = {  # dtype -> (bytes per element, floating point, torch's name)
    "F64": (8, True, "float64"), "F32": (4, True, "float32"), "F16": (2, True, "float16"),
    "BF16": (2, True, "bfloat16"), "F8_E4M3": (1, True, "float8_e4m3fn"), "F8_E5M2": (1, True, "float8_e5m2"),
    "I64": (8, False, "int64"), "I32": (4, False, "int32"), "I16": (2, False, "int16"), "I8": (1, False, "int8"),
    "U64": (8, False, "uint64"), "U32": (4, False, "uint32"), "U16": (2, False, "uint16"), "U8": (1, False, "uint8"),
    "BOOL": (1, False, "bool"),
}  # fmt: skip


class TensorInfo(NamedTuple):
    """A tensor as a weights file's header declares it, before any of its data is read."""

    shape: tuple
    dtype: str  # as torch names it: float32, int64, ...
    floating: bool
    nbytes: int


def safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """The tensors a .safetensors file declares, checked against the file's real size
    before any data is read: the header fits in the file, every tensor's byte range lies in
    the data that follows it and matches its dtype and shape. ModelFileError otherwise."""
    path = Path(path)

    def bad(why: str):
        return ModelFileError(f"'{path}' is not a valid safetensors file: {why}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise bad(f"its header claims {length:,} bytes but the file has {size:,}")
        text = f.read(length)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise bad(f"its header is not JSON ({first_line(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shown = repr(name[:60])
        ok = isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and len(shape) <= 64 and all(
            type(d) is int and 0 <= d < 2**63 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not ok:
            raise bad(f"tensor {shown} needs a known dtype, a shape and two data offsets")
        itemsize, floating, dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        nbytes = math.prod(shape) * itemsize
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise bad(f"tensor {shown} declares {nbytes:,} bytes at {begin:,}..{end:,}, but the file holds "
                      f"{data_size:,} bytes of data")
        tensors[name] = TensorInfo(tuple(shape), dtype, floating, nbytes)
    return tensors


def load_state_dict(path: str | Path, expected: dict | None = None) -> dict:
    """Read weights without unpickling code: safetensors, or torch.load(weights_only=True).

    A .safetensors header is checked against the file before any data is read, and a .pt
    file is memory-mapped; with `expected` (a model's state_dict), names, shapes and dtypes
    are compared with it before the data is copied, so a file that declares gigabytes for a
    small model is refused at the cost of its header. `expected` may hold tensors or
    TensorInfo."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        declared, _ = strip_wrapper_prefixes(safetensors_header(path), expected)  # torch only once the header passed
        _check_declared(path, declared, expected)
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))  # memory-mapped: only what is declared is read
        except Exception as exc:  # safetensors raises several types for corrupt headers
            raise ModelFileError(f"'{path}' is not a valid safetensors file: {first_line(exc)}") from exc
        state, stripped = strip_wrapper_prefixes(state, expected)
        _note(path, stripped, "")
        return state
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # mmap needs the zip format: an old-style file is read as before
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError/EOFError for corrupt files
        raise ModelFileError(
            f"refused to load '{path}': not a plain weights file ({first_line(exc)}); "
            "save a state_dict or use .safetensors"
        ) from exc
    found, where = unwrap_checkpoint(state)
    if found is None:
        keys = f" (its keys: {', '.join(str(k) for k in list(state)[:8])})" if isinstance(state, dict) else ""
        raise ModelFileError(clip(f"'{path}' does not hold a state_dict of tensors{keys}; save model.state_dict(), "
                                  f"or a checkpoint dict holding it under one of {', '.join(CHECKPOINT_KEYS[:4])}"))
    state, stripped = strip_wrapper_prefixes(found, expected)
    _note(path, stripped, where)
    _check_declared(path, state, expected)
    return state


# where training scripts keep the weights in a checkpoint dict, in order of preference (EMA last)
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "model_ema", "state_dict_ema", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def unwrap_checkpoint(obj) -> tuple[dict | None, str]:
    """The state_dict in `obj`, and where it was ("" for a plain state_dict, "model",
    "model.state_dict", ...): a dict of tensors itself, or one under a CHECKPOINT_KEYS key,
    at the top or one level down ({"model": {"state_dict": ...}}); the other entries (epoch,
    optimizer, ...) are ignored. (None, "") when there is none."""
    if _tensor_dict(obj):
        return obj, ""
    if not isinstance(obj, dict):
        return None, ""
    for key in CHECKPOINT_KEYS:
        inner = obj.get(key)
        if _tensor_dict(inner):
            return inner, key
        if isinstance(inner, dict):
            for sub in CHECKPOINT_KEYS:
                if _tensor_dict(inner.get(sub)):
                    return inner[sub], f"{key}.{sub}"
    return None, ""


def _tensor_dict(obj) -> bool:
    from torch import Tensor

    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def strip_wrapper_prefixes(state: dict, expected: dict | None = None) -> tuple[dict, list[str]]:
    """`state` without the prefix DataParallel/DDP ('module.') or torch.compile ('_orig_mod.')
    put on every key (unless the `expected` keys have it too), and the prefixes removed. An
    AveragedModel's (EMA) 'n_averaged' counter beside such keys is dropped."""
    stripped: list[str] = []
    has = lambda keys, p: bool(keys) and all(k.startswith(p) for k in keys)
    while state:
        keys = [k for k in state if k != "n_averaged"]
        prefix = next((p for p in WRAPPER_PREFIXES if has(keys, p) and not has(list(expected or ()), p)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items() if k != "n_averaged"}
        stripped.append(prefix)
    return state, stripped


_NOTED: set = set()  # (file, note): each note is logged once per file


def _note(path: Path, stripped: list[str], where: str) -> None:
    import logging

    parts = ([f"the state_dict under '{where}' of a checkpoint used"] if where else []) + \
        [f"prefix '{p}' stripped ({'torch.compile' if p == '_orig_mod.' else 'DataParallel/DDP'})" for p in stripped]
    if parts and (str(path), tuple(parts)) not in _NOTED:
        _NOTED.add((str(path), tuple(parts)))
        logging.getLogger("edgekd").info("weights '%s': %s", path, "; ".join(parts))


def _check_declared(path: Path, state: dict, expected: dict | None) -> None:
    """Refuse a file whose tensors do not fit `expected` (mismatches, before its data is
    read), or whose declared bytes exceed half of the memory available."""
    if expected is not None:
        problems = state_dict_mismatches(state, expected)
        if problems:
            line = f"weights '{path}' do not fit the model: " + "; ".join(problems)
            hint = transfer_hint(state, expected)
            if len(line) + len(hint) > MAX_MESSAGE:
                hint = transfer_hint(state, expected, short=True)
            raise ModelFileError(clip(line, MAX_MESSAGE - len(hint)) + hint)
    total = sum(t.nbytes if isinstance(t, TensorInfo) else t.numel() * t.element_size() for t in state.values())
    from edgekd.data.base import check_memory  # numpy only, like this module

    check_memory(total, f"weights '{path}'", "use a machine with more memory", error=ModelFileError)


def load_weights(model, path: str | Path) -> None:
    """Load weights into `model`, naming every layer whose name, shape or kind of dtype
    (floating point or not) does not match: nothing is cast silently, nothing is half-loaded.
    Floating-point weights must be finite (NaN or infinity is a broken file)."""
    import torch

    state = load_state_dict(path, expected=model.state_dict())
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"weights '{path}': {key} holds NaN or infinite values; the file is broken "
                                 "(training diverged before it was saved?)")
    model.load_state_dict(state)


def state_dict_mismatches(state: dict, own: dict, ignore=lambda key: False) -> list[str]:
    """Why `state` does not load into a model whose state_dict is `own`: shape mismatches,
    dtype mismatches (integer values for floating-point weights, or the reverse), missing
    and unexpected keys (the first five of each, by layer name), as phrases for a one-line
    error; empty when it fits. Keys for which ignore(key) is true may be missing. `state`
    may hold tensors or TensorInfo (a header's declarations)."""
    missing = [k for k in own if not ignore(k) and k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                   for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    wrong_dtype = [f"{k} (file {_dtype_name(state[k])}, model {_dtype_name(own[k])})"
                   for k in own if k in state and _floating(state[k]) != _floating(own[k])]
    problems = []
    if wrong_shape:
        problems.append("shape mismatch: " + ", ".join(wrong_shape[:5]))
    if wrong_dtype:
        problems.append("dtype mismatch, not cast: " + ", ".join(wrong_dtype[:5]))
    if missing:
        problems.append("missing: " + ", ".join(missing[:5]))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected[:5]))
    return problems


def transfer_hint(state: dict, own: dict, short: bool = False) -> str:
    """For weights of the same architecture whose only misfits are the first convolution's
    input channels and the classifier head's classes: the advice to use teacher.transfer
    (RGB kernels summed for grey input, a new head). Empty otherwise."""
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not wrong or set(state) != set(own):
        return ""
    conv = next((k for k in own if k.endswith("weight") and len(own[k].shape) == 4), None)
    head = next((k for k in reversed(list(own)) if k.endswith("weight") and len(own[k].shape) == 2), None)
    if conv is None or head is None:
        return ""
    fits = {conv: lambda a, b: len(a) == 4 and a[0] == b[0] and a[2:] == b[2:],  # only the input channels differ
            head: lambda a, b: len(a) == 2 and a[1] == b[1],  # only the classes differ
            head[: -len("weight")] + "bias": lambda a, b: len(a) == 1}
    if not all(k in fits and fits[k](tuple(state[k].shape), tuple(own[k].shape)) for k in wrong):
        return ""
    if short:
        return "; other input channels or classes: use teacher.transfer: {pretrained: PATH} instead of teacher.weights"
    return (f"; they were made for other input channels or classes (file: {state[conv].shape[1]} channel(s), "
            f"{state[head].shape[0]} classes; model: {own[conv].shape[1]}, {own[head].shape[0]}): use "
            "teacher.transfer: {pretrained: PATH} instead of teacher.weights")


def _floating(tensor) -> bool:
    return tensor.floating if isinstance(tensor, TensorInfo) else bool(tensor.is_floating_point())


def _dtype_name(tensor) -> str:
    return tensor.dtype if isinstance(tensor, TensorInfo) else str(tensor.dtype).replace("torch.", "")


CHECKPOINT_FORMAT = "edgekd.checkpoint/1"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """torch.save `state` (plain dicts, lists, numbers, strings and tensors) atomically.

    A failure midway (a crash, Ctrl-C, a full disk) leaves the previous checkpoint as it
    was and no temporary file behind. A full disk is raised as OSError(ENOSPC) that names
    the checkpoint.
    """
    import torch

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and path.is_file():
            raise OSError(errno.ENOSPC, f"{exc.strerror} (the previous checkpoint is kept)", str(path)) from exc
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by save_checkpoint, refusing anything but plain data."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, OSError, ...
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else first_line(exc).split(". ")[0]
        raise ModelFileError(f"checkpoint '{path}' is corrupt or unreadable ({reason}); start a new run") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"'{path}' is not an edgekd checkpoint ({CHECKPOINT_FORMAT}); start a new run")
    return state


def remove_temp_files(folder: str | Path) -> None:
    """Remove temporary files that atomic_path left behind when a process was killed
    between writing and cleaning up (e.g. SIGKILL)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():  # only our own files, never through a link
                tmp.unlink(missing_ok=True)

