"""Run state that makes a run repeatable and resumable: seeding, deterministic mode,
and state/progress.json (the stages done, with the global torch RNG state after each).

Written atomically; read back with strict checks, so a corrupt file is refused with a
clear error instead of a silent restart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError
from edgekd.io.artifacts import atomic_write_text

STATE_FILE = "state/progress.json"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Training draws data order and augmentation from its
    own torch.Generator seeded with the same seed (train.fit); there are no DataLoader
    workers to seed, because batches are sliced from in-memory tensors in this process."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """With `enabled`, PyTorch uses deterministic algorithms only (an op without one is an
    error, not a silent difference) for the duration of the block; the previous setting is
    restored afterwards. CUBLAS_WORKSPACE_CONFIG is what cuBLAS needs for deterministic
    results on CUDA (set only if the user has not set it)."""
    if not enabled:
        yield
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def get_torch_rng() -> str:
    import torch

    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")


def check_torch_rng(text, path: Path) -> None:
    import torch

    with torch.random.fork_rng(devices=[]):
        set_torch_rng(text, path)


def set_torch_rng(text, path: Path) -> None:
    import torch

    try:
        raw = base64.b64decode(text, validate=True)
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"resume state '{path}' is corrupt (bad torch_rng); start a new run") from exc


def load_progress(run_dir: Path, known_stages: tuple) -> dict:
    """The resume state: {"done": {stage: report}, "torch_rng": base64 or absent}."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' is not an edgekd run directory (no {STATE_FILE}); nothing to resume")
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"resume state '{path}' is corrupt ({reason}); start a new run") from exc
    if (not isinstance(state, dict) or not isinstance(state.get("done"), dict)
            or not all(isinstance(v, dict) for v in state["done"].values())
            or not isinstance(state.get("torch_rng", ""), str)):
        raise ConfigError(f"resume state '{path}' is corrupt; start a new run")
    unknown = [name for name in state["done"] if name not in known_stages]
    if unknown:
        raise ConfigError(f"resume state '{path}' names unknown stages {unknown}; start a new run")
    if "recipe" in state or "recipe_sha256" in state:
        from edgekd.pipeline.resume import fingerprint

        if (not isinstance(state.get("recipe"), dict) or not isinstance(state.get("recipe_sha256"), str)
                or fingerprint(state["recipe"]) != state["recipe_sha256"]):
            raise ConfigError(f"resume state '{path}' is corrupt (its recipe record does not match its hash); "
                              "start a new run")
    if not isinstance(state.get("recipe_changes", []), list):
        raise ConfigError(f"resume state '{path}' is corrupt (bad recipe_changes); start a new run")
    return state


RECIPE_KEYS = ("recipe", "recipe_sha256", "recipe_changes")  # kept by save_progress when not given


def save_progress(run_dir: Path, done: dict, torch_rng: str | None = None, recipe_state: dict | None = None) -> None:
    """Write the progress state: the stages done, the torch RNG after the last one and the
    run's recipe record (`recipe_state`: its keys of RECIPE_KEYS; None keeps the file's own)."""
    path = Path(run_dir) / STATE_FILE
    if recipe_state is None:
        recipe_state = {}
        try:
            current = json.loads(path.read_bytes().decode("utf-8")) if path.is_file() else {}
            recipe_state = {k: current[k] for k in RECIPE_KEYS if isinstance(current, dict) and k in current}
        except (OSError, ValueError):
            pass
    state = {"done": done}
    if torch_rng is not None:
        state["torch_rng"] = torch_rng
    state.update({k: recipe_state[k] for k in RECIPE_KEYS if k in recipe_state})
    atomic_write_text(path, json.dumps(state, indent=2))
