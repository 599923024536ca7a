"""What every benchmark script shares: the checkout's edgekd on the path, the results folder,
the command and machine a result names, markdown tables, and writing NAME.json and NAME.md.

Scripts run as `python benchmarks/X.py`, so this folder is sys.path[0] and `from common import
...` finds this module; importing it puts the checkout first, so the edgekd beside the scripts
is the one measured, also when edgekd is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

from edgekd.runtime.machine import machine_info  # noqa: E402  (after the path: the checkout's edgekd)

__all__ = ["REPO", "RESULTS", "Clock", "add_numbers", "argument_parser", "command", "int8_op_counts",
           "interleaved_p50s", "machine_info", "machine_line", "machine_with_torch", "pct", "split_tensors", "table",
           "write_results"]


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """The script's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=doc.splitlines()[0])


def add_numbers(parser: argparse.ArgumentParser, **defaults: int | float) -> None:
    """Plain number options, `--name-with-dashes`, each typed by its default (int or float)."""
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


def command() -> str:
    """How this invocation is typed from the checkout: `python benchmarks/X.py ARGS`."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


class Clock:
    """Wall time and the 1-minute load average since it was made: other jobs on a shared
    machine show in the load, so results record it at both ends."""

    def __init__(self) -> None:
        self.start, self.load_start = time.perf_counter(), os.getloadavg()[0]

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def load_average(self) -> list[float]:
        """[at the start, now]."""
        return [self.load_start, os.getloadavg()[0]]


def machine_with_torch(**extra) -> dict:
    """machine_info() with the torch version, for scripts that train or run PyTorch models."""
    import torch

    return {**machine_info(), "torch": torch.__version__, **extra}


def machine_line(m: dict, *fields: str, cores: str = "cores") -> str:
    """'Machine: CPU, N cores, ...' from machine_info(), with the named fields in order: 'int8'
    (the int8 CPU features), 'os', 'python', 'onnxruntime', 'torch' (where the script added it).
    No closing punctuation: scripts go on with their own notes."""
    words = {
        "int8": lambda: f"int8 CPU features {', '.join(m.get('int8_cpu_flags') or []) or 'none'}",
        "os": lambda: f"{m.get('os', '?')}",
        "python": lambda: f"Python {m.get('python', '?')}",
        "onnxruntime": lambda: f"onnxruntime {m.get('onnxruntime', '?')}",
        "torch": lambda: f"torch {m.get('torch', '?')}",
    }
    parts = [f"{m.get('cpu', '?')}", f"{m.get('cores', '?')} {cores}", *(words[f]() for f in fields)]
    return "Machine: " + ", ".join(parts)


def table(header: list[str], align: str, rows) -> list[str]:
    """A markdown table's lines: `align` has one letter a column, 'l' (---) or 'r' (---:);
    each row is a list of cells, formatted already."""
    rule = {"l": "---", "r": "---:"}
    return ["| " + " | ".join(header) + " |", "|" + "|".join(rule[a] for a in align) + "|",
            *["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]]


def pct(value) -> str:
    """A top-1 in percent, or '-' where there is none."""
    return "-" if value is None else f"{value:.2f}"


def int8_op_counts(op_counts: dict | None) -> tuple[int, int]:
    """(int8 kernels, QuantizeLinear + DequantizeLinear nodes left) in an optimized graph's op counts."""
    ops = op_counts or {}
    int8 = sum(c for op, c in ops.items() if op.startswith("QLinear") or op in ("QGemm", "NhwcMaxPool"))
    return int8, ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)


def split_tensors(splits, *names: str) -> dict:
    """NAME_x (normalized float tensors) and NAME_y (int64 labels) of each named split
    ('train', 'val', 'test') of edgekd.data.splits.load_splits, as the training loop takes them."""
    import torch

    from edgekd.train.tensors import to_tensor

    spec, out = splits.spec, {}
    for name in names:
        out[f"{name}_x"] = to_tensor(getattr(splits, f"{name}_x"), spec.mean, spec.std)
        out[f"{name}_y"] = torch.from_numpy(getattr(splits, f"{name}_y").astype("int64"))
    return out


def write_results(folder: Path, name: str, result: dict, markdown: str, json_text: str | None = None) -> None:
    """NAME.json (the result, indented, unless the script formats its own `json_text`) and
    NAME.md in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n" if json_text is None else json_text)
    (folder / f"{name}.md").write_text(markdown)


def interleaved_calls(calls: dict, rounds: int, warmups: int = 1) -> dict:
    """{name: median seconds} of the callables, run in turn (one call of each, `rounds` times)
    after `warmups` calls of each: side by side, so that the machine's drift moves them alike."""
    import statistics

    for fn in calls.values():
        for _ in range(warmups):
            fn()
    seconds = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def interleaved_p50s(paths: list[Path], *, runs: int, repetitions: int, warmup: int = 50) -> dict[Path, list[float]]:
    """{path: [p50 ms per repetition]}: all models in one interleaved `edgekd bench` call per
    repetition (1 thread, batch 1), the order reversed every other time."""
    from edgekd.runtime.bench import bench
    from edgekd.runtime.config import BenchConfig

    cfg = BenchConfig(batch_size=1, threads=1, warmup=warmup, runs=runs, min_seconds=0.0, interleave=True)
    p50 = {p: [] for p in paths}
    for r in range(repetitions):
        order = paths if r % 2 == 0 else paths[::-1]
        for path, row in zip(order, bench(order, cfg=cfg, progress=False)):
            p50[path].append(row.latency_ms["p50"])
    return p50
