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
import os
import tempfile
from pathlib import Path
from typing import Iterator

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


def load_state_dict(path: str | Path) -> dict:
    """Read weights without unpickling code: safetensors, or torch.load(weights_only=True)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file '{path}' does not exist")
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:  # safetensors raises several types for corrupt headers
            raise ModelFileError(f"'{path}' is not a valid safetensors file: {first_line(exc)}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError/EOFError for corrupt files
        raise ModelFileError(
            f"refused to load '{path}': not a plain weights file ({first_line(exc)}); "
            "save a state_dict or use .safetensors"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"'{path}' does not hold a state_dict of tensors")
    return state


def load_weights(model, path: str | Path) -> None:
    """Load weights into `model`, naming every layer whose name or shape does not match."""
    state = load_state_dict(path)
    problems = state_dict_mismatches(state, model.state_dict())
    if problems:
        raise ModelFileError(f"weights '{path}' do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state)


def state_dict_mismatches(state: dict, own: dict, ignore=lambda key: False) -> list[str]:
    """Why `state` does not load into a model whose state_dict is `own`: shape mismatches,
    missing and unexpected keys (the first five of each, by layer name), as phrases for a
    one-line error; empty when it fits. Keys for which ignore(key) is true may be missing."""
    missing = [k for k in own if not ignore(k) and k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                   for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if wrong_shape:
        problems.append("shape mismatch: " + ", ".join(wrong_shape[:5]))
    if missing:
        problems.append("missing: " + ", ".join(missing[:5]))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected[:5]))
    return problems


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
            tmp.unlink(missing_ok=True)

