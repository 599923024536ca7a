"""What every training call takes besides the model, its step and its config: the data it
trains and validates on (TrainData) and how the run goes (RunOptions). The pipeline's
Context makes the RunOptions of a stage (edgekd.pipeline.context.Context.run_options), so
the wrappers around train.fit pass one object on instead of six arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from edgekd.train.batches import InMemory, as_source


@dataclass(frozen=True)
class TrainData:
    """The train and val splits as sources (edgekd.train.batches: in-memory tensors or
    streams). `train_x` / `val_x` give back what the source was made from (the tensor of an
    in-memory source, else the source itself), `train_y` / `val_y` the labels."""

    train: Any
    val: Any

    @classmethod
    def of(cls, train_x, train_y=None, val_x=None, val_y=None) -> TrainData:
        """From tensors and their labels, or from sources (whose labels they carry)."""
        return cls(as_source(train_x, train_y), as_source(val_x, val_y))

    def with_train(self, train_x, train_y=None) -> TrainData:
        """The same val split with another train split (tensors and labels, or a source)."""
        return dataclasses.replace(self, train=as_source(train_x, train_y))

    # the tensors (or sources) and labels the data was made from, as the loop and evaluation read them
    train_x = property(lambda self: _images(self.train))
    train_y = property(lambda self: self.train.labels)
    val_x = property(lambda self: _images(self.val))
    val_y = property(lambda self: self.val.labels)


def _images(source):
    return source.x if isinstance(source, InMemory) else source


@dataclass(frozen=True)
class RunOptions:
    """How one training run goes.

    seed        the data order's and augmentation's generator
    desc        the run's name in progress bars, logs, errors and the checkpoint's identity
    progress    progress bars
    checkpoint  a file written at the end of every epoch (None: none), see edgekd.train.checkpoint
    resume      continue from `checkpoint` when it exists
    log         where notes go (resuming, thread choices); None: nowhere
    name        the run's name in epoch lines and per-epoch metrics ("": `desc`); runs of one
                stage that share a `desc` (born-again generations, fine-tuning) differ by it
    epoch_log   epoch_log(name, first_epoch, epochs) -> an EpochLog: where each finished
                epoch goes (a log line, metrics files); None: nowhere. The pipeline's Context
                makes it (edgekd.pipeline.epoch_log), so training knows no run directory
    """

    seed: int = 0
    desc: str = "train"
    progress: bool = True
    checkpoint: str | Path | None = None
    resume: bool = False
    log: Callable[[str], None] | None = None
    name: str = ""
    epoch_log: Callable[[str, int, int], EpochLog] | None = None

    def with_(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """The name of this run in epoch lines and metrics files."""
        return self.name or self.desc


class EpochLog(Protocol):
    """Where one training run's finished epochs go (RunOptions.epoch_log makes one per run)."""

    def epoch(self, stats: dict) -> None:
        """One finished epoch: epoch, epochs, loss, train_top1, val_top1, lr,
        images_per_second, seconds, eta_seconds."""

    def close(self) -> None:
        """The run is over (finished, failed or interrupted)."""


DEFAULT_RUN = RunOptions()  # the default of every `run` parameter (frozen: safe to share)
