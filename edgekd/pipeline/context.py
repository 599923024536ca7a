"""The stage contract of `edgekd compress`.

Every stage is a module in pipeline/stages/ with one public function

    run(ctx: Context, cfg: <its own recipe section>, inputs: <its StageInputs>) -> StageResult

It reads its own config section and the inputs the chain hands it (data, models, and the
few settings of other sections it needs: a dataclass per stage in stage_inputs.py, built in
chain.py), trains through ctx.run_options(...) (edgekd.train.plumbing.RunOptions), writes its files into the
run directory through `ctx.path(...)`, and returns plain data (`record`, kept in
state/progress.json and the report) plus in-memory `artifacts` for later stages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from edgekd.train.plumbing import RunOptions

logger = logging.getLogger("edgekd")


@dataclass(frozen=True)
class Context:
    """What every stage may use: where the run lives and how it runs."""

    run_dir: Path
    seed: int = 0
    resume: bool = False  # continue training stages from their per-epoch checkpoints
    progress: bool = True  # progress bars
    log: Callable[[str], None] = logger.info

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def run_options(self, desc: str, checkpoint: Path | None = None, name: str = "") -> RunOptions:
        """How a stage's training run goes: seed, progress, resume and log from the run;
        its name (`desc`; `name` in epoch lines and metrics files when several runs share a
        `desc`) and per-epoch checkpoint file from the stage. Each finished epoch is logged
        and recorded in the run directory (edgekd.pipeline.epoch_log)."""
        from edgekd.pipeline.epoch_log import EpochLogs
        from edgekd.train.plumbing import RunOptions  # here: the pipeline's modules load without torch

        return RunOptions(seed=self.seed, desc=desc, progress=self.progress, checkpoint=checkpoint,
                          resume=self.resume, log=self.log, name=name, epoch_log=EpochLogs(self.run_dir, self.log))


@dataclass
class StageResult:
    """A stage's answer: `record` is plain data (JSON), `artifacts` are objects for later stages."""

    record: dict
    artifacts: dict = field(default_factory=dict)


# -- small helpers the stages share -------------------------------------------------------


def input_shape_of(spec) -> tuple[int, int, int]:
    return (spec.channels, spec.height, spec.width)


def build_arch(spec, arch: str, arch_args: dict):
    """A fresh model of `arch` for the data's channels, classes and image size (torchvision
    and timm models are adapted to small images: edgekd.models.adapt)."""
    from edgekd.models.zoo import agreed_shape_args, build_model

    # arch_args may repeat the data's in_channels / num_classes, never clash with them
    arch_args = agreed_shape_args(arch, arch_args, in_channels=spec.channels, num_classes=spec.num_classes)
    return build_model(arch, in_channels=spec.channels, num_classes=spec.num_classes,
                       input_size=(spec.height, spec.width), **arch_args)


def model_summary(model, arch: str, spec) -> dict:
    """arch, params, MACs, and `adapted`: what edgekd changed in a torchvision/timm model for
    the data (edgekd.models.adapt), when anything was."""
    from edgekd.models.adapt import adaptations
    from edgekd.models.cost import count_macs, count_params

    summary = {"arch": arch, "params": count_params(model), "macs": count_macs(model, input_shape_of(spec))}
    adapted = adaptations(model)
    return {**summary, "adapted": adapted} if adapted else summary


def fit_summary(fit_result) -> dict:
    return {
        "epochs": fit_result.epochs,
        "best_epoch": fit_result.best_epoch,
        "train_seconds": round(fit_result.seconds, 3),
        "images_per_second": round(fit_result.images_per_second, 1),
        "compute": getattr(fit_result, "compute", {}),  # device, precision, channels_last it trained with
    }


def degenerate_flags(ctx: Context, name: str, model, val_x, val_y, num_classes: int) -> list[dict]:
    """The degenerate-model guard (edgekd.train.guard) on a model's val predictions: the flags
    for the stage's record (report.json `flags`, red in report.md), logged as a warning."""
    from edgekd.train.evaluate import predict
    from edgekd.train.guard import degenerate_reasons, flag

    predictions = predict(model, val_x, full_precision=True).argmax(1).numpy()
    entry = flag(name, degenerate_reasons(predictions, val_y.numpy(), num_classes))
    if entry is None:
        return []
    logger.warning(f"[{name}] warning: {entry['message']}")
    return [entry]
