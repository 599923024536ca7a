"""`edgekd compress`: the chain, one function per stage, in the order they run.

    data -> teacher -> distill -> prune (optional) -> export -> quantize -> bench -> report

The stages live in: stages_train.py (teacher, distill), stage_prune.py, stage_quantize.py,
and here (data, export, bench, report); run.py holds what they share (artifact names, the
Run object, lazily loaded data and models).

Each stage writes its artifacts atomically into the run directory, then records itself
as done in state/progress.json; `--resume` skips the stages recorded there and reloads
their artifacts, so an interrupted run continues where it stopped. The two training
stages also save a checkpoint at the end of every epoch (state/teacher.ckpt,
state/distill.ckpt), so a resumed run continues from the epoch after the last saved one;
a stage's checkpoint is removed once the stage is recorded as done (its weights file is
then the artifact). progress.json also keeps the global torch RNG state after each stage,
so that a resumed run initializes the student exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from edgekd.errors import ConfigError, ModelFileError
from edgekd.io.artifacts import atomic_write_text, load_checkpoint, remove_temp_files
from edgekd.pipeline.context import Run, build_arch, run_splits
from edgekd.pipeline.layout import CHECKPOINTS, RECIPE_FILE, STAGES
from edgekd.pipeline.runstate import (
    STATE_FILE,
    check_torch_rng,
    deterministic_mode,
    get_torch_rng,
    load_progress,
    save_progress,
    seed_everything,
    set_torch_rng,
)
from edgekd.pipeline.stages.bench import stage_bench
from edgekd.pipeline.stages.data import stage_data
from edgekd.pipeline.stages.distill import check_distill_knowledge, stage_distill
from edgekd.pipeline.stages.export import stage_export
from edgekd.pipeline.stages.prune import stage_prune
from edgekd.pipeline.stages.quantize import stage_quantize
from edgekd.pipeline.stages.report import stage_report
from edgekd.pipeline.stages.teacher import stage_teacher
from edgekd.recipe import Recipe


def compress(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run every stage not yet done in `run_dir`; returns the final report (report.json).

    With resume=True, stages recorded in state/progress.json are skipped and a training
    stage with a checkpoint continues after its last saved epoch. A corrupt progress file
    or checkpoint is an error before anything is written, never a silent restart.
    """
    run = Run(recipe=recipe, run_dir=Path(run_dir), resume=resume, progress=progress, log=log)
    state = load_progress(run.run_dir, STAGES) if resume else {"done": {}}
    done = state["done"]
    if resume:
        if state.get("torch_rng") is not None:
            check_torch_rng(state["torch_rng"], run.path(STATE_FILE))
        for name, file in CHECKPOINTS.items():
            if name not in done and run.path(file).is_file():
                load_checkpoint(run.path(file))  # unreadable: refuse now, not after the stages before it
    preflight(run)  # bad data or model names fail here, before anything is written
    log(f"run directory: {run.run_dir}")
    run.run_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(run.path("state"))  # left by a process killed mid-write (SIGKILL)
    if not resume:
        atomic_write_text(run.path(RECIPE_FILE), recipe.to_yaml())
        save_progress(run.run_dir, {})
        for file in CHECKPOINTS.values():  # a --force run must not continue an old run's training
            run.path(file).unlink(missing_ok=True)
        for name in CHECKPOINTS:
            _remove_checkpoint(run, name)
    with deterministic_mode(recipe.deterministic):
        seed_everything(recipe.seed)
        if state.get("torch_rng") is not None:
            set_torch_rng(state["torch_rng"], run.path(STATE_FILE))
        _run_stages(run, done)
    return run.report


def _run_stages(run: Run, done: dict) -> None:
    log = run.log
    for name, stage in (
        ("data", stage_data),
        ("teacher", stage_teacher),
        ("distill", stage_distill),
        ("prune", stage_prune),
        ("export", stage_export),
        ("quantize", stage_quantize),
        ("bench", stage_bench),
        ("report", stage_report),
    ):
        if name in done:
            run.stages[name] = done[name]
            log(f"[{name}] done in an earlier run; skipped")
            _remove_checkpoint(run, name)  # left if the run stopped between the two steps below
            continue
        start = time.perf_counter()
        log(f"[{name}] ...")
        result = stage(run)
        result["seconds"] = round(time.perf_counter() - start, 3)
        run.stages[name] = result
        done[name] = result
        save_progress(run.run_dir, done, torch_rng=get_torch_rng())
        _remove_checkpoint(run, name)


def _remove_checkpoint(run: Run, name: str) -> None:
    if name in CHECKPOINTS:
        run.path(CHECKPOINTS[name]).unlink(missing_ok=True)
    for extra in _extra_checkpoints(run, name):
        extra.unlink(missing_ok=True)


def _extra_checkpoints(run: Run, name: str) -> list[Path]:
    """Per-epoch checkpoints of schemes with several trainings in one stage: transfer
    learning's head phase (state/teacher.head.ckpt), born-again generations
    (state/distill.gen<k>.ckpt)."""
    return sorted(run.path("state").glob(f"{name}.*.ckpt"))


def preflight(run: Run) -> None:
    """Load the data and build both architectures once, so that input errors surface
    before the run directory is touched."""
    run_splits(run)
    build_arch(run, run.recipe.teacher.arch, run.recipe.teacher.arch_args)
    build_arch(run, run.recipe.distill.arch, run.recipe.distill.arch_args)
    weights = run.recipe.teacher.weights
    if weights is not None and not Path(weights).is_file():
        raise ModelFileError(f"teacher.weights '{weights}' does not exist")
    transfer = run.recipe.teacher.transfer
    if transfer is not None:
        if weights is not None:
            raise ConfigError("set teacher.weights or teacher.transfer.pretrained, not both")
        if not Path(transfer.pretrained).is_file():
            raise ModelFileError(f"teacher.transfer.pretrained '{transfer.pretrained}' does not exist")
        if transfer.head_epochs == 0 and run.recipe.teacher.epochs == 0:
            raise ConfigError("teacher.transfer.head_epochs and teacher.epochs are both 0: nothing trains the new head")
    if weights is None and transfer is None and run.recipe.teacher.epochs == 0:
        raise ConfigError("teacher.epochs is 0 and teacher.weights is not set: train the teacher or give its weights")
    check_distill_knowledge(run)
