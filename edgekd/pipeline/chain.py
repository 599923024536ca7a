"""`edgekd compress`: the chain, read top to bottom.

    data -> teacher -> distill -> prune (optional) -> export -> quantize -> bench -> report

Each stage is `stages/<name>.run(ctx, cfg, inputs) -> StageResult` (pipeline/context.py):
it gets its own recipe section and the inputs named in `_inputs` below, nothing else.

Each stage writes its artifacts atomically into the run directory, then records itself
as done in state/progress.json; `--resume` skips the stages recorded there and reloads
their artifacts (pipeline/store.py), so an interrupted run continues where it stopped. The
training stages also checkpoint every epoch (state/teacher.ckpt, state/distill.ckpt), so a
resumed run continues from the epoch after the last saved one; a stage's checkpoint is
removed once the stage is recorded as done. progress.json also keeps the global torch RNG
state after each stage, so that a resumed run initializes the student exactly as an
uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from edgekd.errors import ConfigError, ModelFileError
from edgekd.io.artifacts import atomic_write_text, load_checkpoint, remove_temp_files
from edgekd.pipeline.context import Context, StageResult, build_arch, logger
from edgekd.pipeline.layout import CHECKPOINTS, RECIPE_FILE, STAGES
from edgekd.pipeline.runstate import (STATE_FILE, check_torch_rng, deterministic_mode, get_torch_rng, load_progress,
                                      save_progress, seed_everything, set_torch_rng)
from edgekd.pipeline.stages import bench, data, distill, export, prune, quantize, report, teacher
from edgekd.pipeline.store import RunStore
from edgekd.recipe import Recipe

# (stage, its module, the recipe section it reads); the order is the chain's
CHAIN = (
    ("data", data, "data"),
    ("teacher", teacher, "teacher"),
    ("distill", distill, "distill"),
    ("prune", prune, "prune"),
    ("export", export, "export"),
    ("quantize", quantize, "quantize"),
    ("bench", bench, "bench"),
    ("report", report, None),  # the report repeats the whole recipe
)
assert tuple(name for name, _, _ in CHAIN) == STAGES


def _inputs(name: str, recipe: Recipe, store: RunStore) -> dict:
    """What each stage is handed: data, models, and the few settings of other sections it needs."""
    if name == "data":
        return {"splits": store.splits()}
    if name == "teacher":
        from edgekd.distill.config import extra_teacher_configs

        extra = extra_teacher_configs(recipe.distill) if distill.learns_from_teacher(recipe.distill) else []
        return {"splits": store.splits(), "tensors": store.tensors(), "extra_teachers": extra}
    if name == "distill":
        teachers = [store.teacher(), *store.extra_teachers()] if distill.learns_from_teacher(recipe.distill) else []
        return {"splits": store.splits(), "tensors": store.tensors(), "teachers": teachers}
    if name == "prune":
        if not recipe.prune.enabled:
            return {}
        from edgekd.runtime.session import session_settings

        deployed = {"int8": recipe.quantize.enabled, "quant_cfg": recipe.quantize, "provider": recipe.bench.provider,
                    "threads": recipe.bench.threads, "session_options": session_settings(recipe.bench)}
        return {"splits": store.splits(), "tensors": store.tensors(), "teacher": store.teacher(),
                "student": store.student(), "kd": recipe.distill, "deployed": deployed}
    if name == "export":
        models = {"teacher": (store.teacher(), recipe.teacher.arch, store.records["teacher"]),
                  "student": (store.student(), recipe.distill.arch, store.student_record())}
        return {"splits": store.splits(), "tensors": store.tensors(), "models": models}
    if name == "quantize":
        if recipe.quantize.enabled and recipe.quantize.method == "qat":
            return {"splits": store.splits(), "tensors": store.tensors(), "teacher": store.teacher(),
                    "student": store.student(), "kd": recipe.distill, "opset": recipe.export.opset}
        return {"splits": store.splits()}
    if name == "report":
        return {"stages": {k: v for k, v in store.records.items() if k != "report"}}
    return {}


def compress(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
             log: Callable[[str], None] = logger.info) -> dict | None:
    """Run every stage not yet done in `run_dir`; returns the final report (report.json), or
    None when every stage was already done.

    With resume=True, stages recorded in state/progress.json are skipped and a training
    stage with a checkpoint continues after its last saved epoch. A corrupt progress file
    or checkpoint is an error before anything is written, never a silent restart.
    """
    ctx = Context(run_dir=Path(run_dir), seed=recipe.seed, resume=resume, progress=progress, log=log)
    state = load_progress(ctx.run_dir, STAGES) if resume else {"done": {}}
    done = state["done"]
    if resume:
        if state.get("torch_rng") is not None:
            check_torch_rng(state["torch_rng"], ctx.path(STATE_FILE))
        for name, file in CHECKPOINTS.items():
            if name not in done and ctx.path(file).is_file():
                load_checkpoint(ctx.path(file))  # unreadable: refuse now, not after the stages before it
    store = RunStore(recipe, ctx, records={})
    preflight(recipe, store)  # bad data or model names fail here, before anything is written
    log(f"run directory: {ctx.run_dir}")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(ctx.path("state"))  # left by a process killed mid-write (SIGKILL)
    if not resume:
        atomic_write_text(ctx.path(RECIPE_FILE), recipe.to_yaml())
        save_progress(ctx.run_dir, {})
        for name in CHECKPOINTS:  # a --force run must not continue an old run's training
            _remove_checkpoints(ctx, name)
    with deterministic_mode(recipe.deterministic):
        seed_everything(recipe.seed)
        if state.get("torch_rng") is not None:
            set_torch_rng(state["torch_rng"], ctx.path(STATE_FILE))
        return _run_stages(ctx, recipe, store, done)


def _run_stages(ctx: Context, recipe: Recipe, store: RunStore, done: dict) -> dict | None:
    final = None
    for name, stage, section in CHAIN:
        if name in done:
            store.records[name] = done[name]
            ctx.log(f"[{name}] done in an earlier run; skipped")
            _remove_checkpoints(ctx, name)  # left if the run stopped between the two steps below
            continue
        start = time.perf_counter()
        ctx.log(f"[{name}] ...")
        cfg = getattr(recipe, section) if section else recipe.to_dict()
        result: StageResult = stage.run(ctx, cfg, _inputs(name, recipe, store))
        record = {**result.record, "seconds": round(time.perf_counter() - start, 3)}
        store.update({k: v for k, v in result.artifacts.items() if k != "report"})
        final = result.artifacts.get("report", final)
        store.records[name] = done[name] = record
        save_progress(ctx.run_dir, done, torch_rng=get_torch_rng())
        _remove_checkpoints(ctx, name)
    return final


def _remove_checkpoints(ctx: Context, name: str) -> None:
    """A stage's per-epoch checkpoint, and those of schemes with several trainings in one
    stage: transfer learning's head phase (state/teacher.head.ckpt), extra teachers
    (state/teacher.extra<i>.ckpt), born-again generations (state/distill.gen<k>.ckpt)."""
    if name in CHECKPOINTS:
        ctx.path(CHECKPOINTS[name]).unlink(missing_ok=True)
    for extra in sorted(ctx.path("state").glob(f"{name}.*.ckpt")):
        extra.unlink(missing_ok=True)


def preflight(recipe: Recipe, store: RunStore) -> None:
    """Load the data and build both architectures once, so that input errors surface
    before the run directory is touched."""
    spec = store.splits().spec
    build_arch(spec, recipe.teacher.arch, recipe.teacher.arch_args)
    build_arch(spec, recipe.distill.arch, recipe.distill.arch_args)
    weights = recipe.teacher.weights
    if weights is not None and not Path(weights).is_file():
        raise ModelFileError(f"teacher.weights '{weights}' does not exist")
    transfer = recipe.teacher.transfer
    if transfer is not None:
        if weights is not None:
            raise ConfigError("set teacher.weights or teacher.transfer.pretrained, not both")
        if not Path(transfer.pretrained).is_file():
            raise ModelFileError(f"teacher.transfer.pretrained '{transfer.pretrained}' does not exist")
        if transfer.head_epochs == 0 and recipe.teacher.epochs == 0:
            raise ConfigError("teacher.transfer.head_epochs and teacher.epochs are both 0: nothing trains the new head")
    if weights is None and transfer is None and recipe.teacher.epochs == 0:
        raise ConfigError("teacher.epochs is 0 and teacher.weights is not set: train the teacher or give its weights")
    distill.check(recipe.distill, spec=spec, teacher_arch=recipe.teacher.arch,
                  teacher_arch_args=recipe.teacher.arch_args)
