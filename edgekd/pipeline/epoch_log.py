"""Training you can watch: each finished epoch of a stage's training run as one log line
(on the `edgekd` logger: the terminal, a log file, a notebook), one row of
RUN/metrics/<name>.csv and, with `tensorboard` installed, scalars in RUN/tb/<name>/.

The loop (edgekd.train.loop.fit) calls RunOptions.epoch_log, which Context.run_options sets
to `EpochLogs(run_dir, log)`; training itself knows no run directory. A row is written before
the epoch's checkpoint, as one append: a crash leaves whole rows, and a resumed run, which
continues after its checkpoint's epoch, first drops the rows of the epochs after it.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekd.io.artifacts import atomic_write_text
from edgekd.pipeline.layout import METRICS_CSV, TENSORBOARD_DIR

logger = logging.getLogger("edgekd")

COLUMNS = ("epoch", "epochs", "train_loss", "train_top1", "val_top1", "lr", "images_per_second", "seconds",
           "eta_seconds", "time")
TENSORBOARD_SCALARS = ("train_loss", "train_top1", "val_top1", "lr", "images_per_second")


@dataclass(frozen=True)
class EpochLogs:
    """RunOptions.epoch_log of a run directory: EpochLogs(run_dir, log)(name, first_epoch, epochs)."""

    run_dir: Path
    log: Callable[[str], None]

    def __call__(self, name: str, first_epoch: int, epochs: int) -> StageEpochs:
        return StageEpochs(self.run_dir, name, first_epoch, self.log)


class StageEpochs:
    """The epochs of one training run named `name`, from `first_epoch` on."""

    def __init__(self, run_dir: Path, name: str, first_epoch: int, log: Callable[[str], None]):
        self.name, self.log = name, log
        self.csv_path = Path(run_dir) / METRICS_CSV.format(name)
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        _keep_rows_before(self.csv_path, first_epoch)
        self.writer = _tensorboard_writer(Path(run_dir) / TENSORBOARD_DIR.format(name), first_epoch)

    def epoch(self, stats: dict) -> None:
        row = {**stats, "train_loss": stats["loss"], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.log(epoch_line(self.name, row))
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        text = io.StringIO()
        table = csv.writer(text, lineterminator="\n")
        if new:
            table.writerow(COLUMNS)
        table.writerow([_cell(row.get(column)) for column in COLUMNS])
        with open(self.csv_path, "a", encoding="utf-8") as file:
            file.write(text.getvalue())  # one write: the header and the row, or the row
        if self.writer is not None:
            for key in TENSORBOARD_SCALARS:
                self.writer.add_scalar(key, float(row[key]), int(row["epoch"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_line(name: str, row: dict) -> str:
    """`2026-12-06 21:40:02 [teacher] epoch 3/10  loss 0.4123  val top-1 84.20%  lr 0.0081
    1520 img/s  ETA 0:01:12`"""
    return (f"{row['time']} [{name}] epoch {row['epoch']}/{row['epochs']}  loss {row['train_loss']:.4f}  "
            f"val top-1 {row['val_top1']:.2f}%  lr {row['lr']:.3g}  {row['images_per_second']:.0f} img/s  "
            f"ETA {_duration(row['eta_seconds'])}")


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics file as written (strings), in order."""
    with open(path, encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def _keep_rows_before(path: Path, first_epoch: int) -> None:
    """Rows of epochs from `first_epoch` on are trained again: drop them (atomically)."""
    if not path.exists():
        return
    rows = read_rows(path)
    kept = [row for row in rows if _epoch_of(row) is not None and _epoch_of(row) < first_epoch]
    if len(kept) == len(rows):
        return
    text = io.StringIO()
    table = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    table.writeheader()
    table.writerows(kept)
    atomic_write_text(path, text.getvalue())


def _epoch_of(row: dict) -> int | None:
    try:
        return int(row.get("epoch") or "")
    except ValueError:  # a row cut short by a crash of another writer: never kept
        return None


@functools.lru_cache(maxsize=1)
def _summary_writer_class():
    """torch's SummaryWriter, or None (said once) without the `tensorboard` package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tensorboard` extra is not installed
        logger.debug("no TensorBoard event files: the tensorboard package is not installed "
                     "(pip install 'edgekd[tensorboard]')")
        return None
    return SummaryWriter


def remove_epoch_files(run_dir: Path) -> None:
    """The metrics and event files of every training run (a --force run replaces an earlier run)."""
    for name in (METRICS_CSV, TENSORBOARD_DIR):
        shutil.rmtree(Path(run_dir) / Path(name.format("x")).parent, ignore_errors=True)


def _tensorboard_writer(folder: Path, first_epoch: int):
    SummaryWriter = _summary_writer_class()  # noqa: N806 (a class)
    if SummaryWriter is None:
        return None
    if first_epoch == 1:  # trained from the start: an earlier try's events would show beside this one's
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
    # purge_step: a resumed run's events of the epochs it trains again are hidden
    return SummaryWriter(log_dir=str(folder), purge_step=first_epoch if first_epoch > 1 else None)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
