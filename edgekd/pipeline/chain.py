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

import dataclasses
import time
from pathlib import Path
from typing import Callable

from edgekd.errors import ConfigError
from edgekd.io.artifacts import atomic_write_text, load_checkpoint, remove_temp_files
from edgekd.pipeline import stage_inputs
from edgekd.pipeline.context import Context, StageResult, logger
from edgekd.pipeline.epoch_log import remove_epoch_files
from edgekd.pipeline.layout import CHECKPOINTS, LOCK_FILE, RECIPE_FILE, STAGES
from edgekd.pipeline.preflight import advice, preflight
from edgekd.pipeline.resume import check_changes, check_data, record_changes, stage_notes
from edgekd.pipeline.rundir import check_inputs_outside, check_new_run_dir, check_resume_dir, run_folders, run_lock
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
from edgekd.pipeline.stages import bench, data, distill, export, prune, quantize, report, teacher
from edgekd.pipeline.store import RunStore
from edgekd.recipe import Recipe
from edgekd.search.stage import student_arch
from edgekd.train import distributed
from edgekd.train.compute import resolve as resolve_compute
from edgekd.train.compute import use as use_compute

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
RANK0_ONLY = ("export", "quantize", "bench", "report")  # under torchrun, the stages that do not train


def _inputs(name: str, recipe: Recipe, store: RunStore):
    """What each stage is handed (its dataclass in stage_inputs.py): data, models, and the few
    settings of other sections it needs."""
    if name == "data":
        return stage_inputs.DataInputs(store.splits())
    if name == "teacher":
        from edgekd.distill.config import extra_teacher_configs

        extra = extra_teacher_configs(recipe.distill) if distill.learns_from_teacher(recipe.distill) else []
        # the teacher learns from the labeled images only, repeated to the train split's size per epoch
        # (label-scarce data: edgekd.data.unlabeled); with teacher.semi_supervised from all of them,
        # and the repeated copy (54,000 images from 600) is built only when a supervised teacher reads it
        supervised = any(cfg.semi_supervised is None and cfg.onnx is None for cfg in (recipe.teacher, *extra))
        return stage_inputs.TeacherInputs(store.splits(), data=store.labeled_tensors(repeated=supervised),
                                          every=store.tensors(), extra_teachers=extra)
    if name == "distill":
        teachers = [store.teacher(), *store.extra_teachers()] if distill.learns_from_teacher(recipe.distill) else []
        deployed = {"quant_cfg": recipe.quantize, "opset": recipe.export.opset}  # distill.arch auto exports with these
        return stage_inputs.DistillInputs(store.splits(), data=store.tensors(), teachers=teachers, deployed=deployed)
    if name == "prune":
        if not recipe.prune.enabled:
            return None
        from edgekd.prune.latency import Deployed

        deployed = Deployed(int8=recipe.quantize.enabled, quant_cfg=recipe.quantize, bench=recipe.bench)
        return stage_inputs.PruneInputs(store.splits(), data=store.tensors(), labeled=store.labeled_tensors(),
                                        teacher=store.teacher(), student=store.student(), kd=recipe.distill,
                                        deployed=deployed)
    if name == "export":
        models = {"teacher": (store.teacher(), recipe.teacher.arch, store.records["teacher"]),
                  "student": (store.student(), student_arch(recipe.distill, store.records.get("distill"))[0],
                              store.student_record())}
        return stage_inputs.ExportInputs(store.splits(), data=store.tensors(), models=models)
    if name == "quantize":
        if recipe.quantize.enabled and recipe.quantize.method == "qat":
            return stage_inputs.QuantizeInputs(store.splits(), data=store.tensors(), teacher=store.teacher(),
                                               student=store.student(), kd=recipe.distill, opset=recipe.export.opset)
        return stage_inputs.QuantizeInputs(store.splits())
    if name == "report":
        return stage_inputs.ReportInputs({k: v for k, v in store.records.items() if k != "report"})
    return stage_inputs.BenchInputs()


def compress(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, force: bool = False, progress: bool = True,
             log: Callable[[str], None] = logger.info) -> dict | None:
    """Run every stage not yet done in `run_dir`; returns the final report (report.json), or
    None when every stage was already done (or on a torchrun rank other than 0).

    Under torchrun (edgekd.train.distributed) every rank joins the process group first; rank
    0 runs the chain in `run_dir`, the others in their own copy inside it (state/rank<N>),
    where they train their share of each batch and skip the stages that do not train.
    """
    ranks = distributed.world_size()
    if ranks > 1:
        check_distributable(recipe)
        distributed.setup(resolve_compute(recipe.device, **dataclasses.asdict(recipe.compute)).device)
        if not distributed.is_main():
            return _follow(recipe, resume)
    try:
        return _compress(recipe, run_dir, resume=resume, force=force, progress=progress, log=log)
    finally:
        if ranks > 1:
            distributed.teardown()


def check_distributable(recipe: Recipe) -> None:
    """What the ranks cannot do together yet: stages whose decisions rank 0 alone makes."""
    if recipe.quantize.enabled and recipe.quantize.method == "qat":
        raise ConfigError("quantize.method qat is not supported under torchrun yet; run it in one process, or "
                          "use method ptq")
    if recipe.prune.enabled and recipe.prune.latency_targeted:
        raise ConfigError("latency-targeted pruning (prune.target_latency_ms / target_speedup) times candidates on "
                          "rank 0 alone; run it in one process, or prune by ratio or target_macs")


def _follow(recipe: Recipe, resume: bool) -> None:
    """A rank other than 0: the same chain in its own copy inside the run that rank 0 holds (a
    resumed run is copied as rank 0 left it), training its share; nothing else of the run is
    written, and the copy is removed at the end."""
    import shutil

    real = distributed.share_run_dir(None)  # waits until rank 0 holds the run
    work = distributed.rank_copy(real)
    try:
        if resume:
            distributed.copy_for_rank(real, work)
        _compress(recipe, work, resume=resume, force=False, progress=False, log=logger.debug)
        shutil.rmtree(work, ignore_errors=True)
        distributed.ranks_done(None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        distributed.teardown()
    return None


def _compress(recipe: Recipe, run_dir: str | Path, *, resume: bool, force: bool, progress: bool,
              log: Callable[[str], None]) -> dict | None:
    """The chain in one process (see compress).

    A new run needs `run_dir` new or empty (with force: an earlier run, replaced). With
    resume=True, stages recorded in state/progress.json are skipped and a training stage
    with a checkpoint continues after its last saved epoch; the recipe may differ from the
    run's only in keys of stages still to run (pipeline/resume.py). Every input error
    (pipeline/preflight.py), a corrupt progress file or checkpoint, a link inside the run
    directory or another run holding it is an error before anything is written.
    """
    real = check_resume_dir(run_dir) if resume else check_new_run_dir(run_dir, force)
    ctx = Context(run_dir=real, seed=recipe.seed, resume=resume, progress=progress, log=log)
    state, changes = _resume_state(ctx, recipe, run_dir) if resume else ({"done": {}}, {})
    if not resume:
        check_inputs_outside(recipe, real)
    compute = resolve_compute(recipe.device, **dataclasses.asdict(recipe.compute))  # cuda w/o GPU: exit 2
    store = RunStore(recipe, ctx, records={})
    if resume:  # the data the finished stages were made from; its file list before preflight scans the files
        check_data(state, recipe.data, store.splits, real, run_dir, log)
    preflight(recipe, store, done=state["done"])  # bad data, models, weights, opset: before anything is written
    with run_lock(real, run_dir):
        if resume:  # again under the lock: another run may have advanced the state in between
            state, changes = _resume_state(ctx, recipe, run_dir)
        elif not force and not _holds_only_lock(real):
            raise ConfigError(f"run directory '{run_dir}' was filled by another run while this one started; "
                              "give another --out")
        log(f"run directory: {real}")
        for note in advice(recipe):
            log(f"warning: {note}")
        for folder in run_folders(real):  # temp files of a process killed mid-write (SIGKILL)
            remove_temp_files(folder)
        if not resume:
            atomic_write_text(ctx.path(RECIPE_FILE), recipe.to_yaml())
            record_changes(state, {}, recipe.to_dict())
            save_progress(ctx.run_dir, {}, recipe_state=state)
            for name in CHECKPOINTS:  # a --force run must not continue an old run's training
                _remove_checkpoints(ctx, name)
            remove_epoch_files(real)  # nor show its epochs
        elif changes or "recipe" not in state:
            _apply_changes(ctx, recipe, state, changes)
        log(f"training on {compute.device}, {compute.precision}"
            + (", channels_last" if compute.channels_last else ""))
        with deterministic_mode(recipe.deterministic), use_compute(compute):
            seed_everything(recipe.seed)
            if state.get("torch_rng") is not None:
                set_torch_rng(state["torch_rng"], ctx.path(STATE_FILE))
            if distributed.is_main():
                distributed.remove_rank_copies(real)  # left by a rank killed -9 in an earlier run
                if distributed.world_size() > 1:
                    distributed.share_run_dir(real)  # the other ranks start now
            return _run_stages(ctx, recipe, store, state, stage_notes(state))


def _resume_state(ctx: Context, recipe: Recipe, shown) -> tuple[dict, dict]:
    """The progress state of a run to resume, checked, and the allowed recipe changes."""
    state = load_progress(ctx.run_dir, STAGES)
    done = state["done"]
    if state.get("torch_rng") is not None:
        check_torch_rng(state["torch_rng"], ctx.path(STATE_FILE))
    for name, file in CHECKPOINTS.items():
        if name not in done and ctx.path(file).is_file():
            load_checkpoint(ctx.path(file))  # unreadable: refuse now, not after the stages before it
    return state, check_changes(state, recipe.to_dict(), shown, defaults=Recipe().to_dict())


def _apply_changes(ctx: Context, recipe: Recipe, state: dict, changes: dict) -> None:
    """A resume with allowed recipe changes: the stages from the first one that reads a changed
    key on start again (their checkpoints were written for the old settings), recipe.yaml and
    progress.json record the new recipe."""
    first = min((STAGES.index(c["stage"]) for c in changes.values()), default=len(STAGES))
    for stage in STAGES[first:]:
        if any(p.is_file() for p in _checkpoint_files(ctx, stage)):
            ctx.log(f"[{stage}] its settings changed: the stage starts again from its first epoch")
        _remove_checkpoints(ctx, stage)
    for key, change in changes.items():
        ctx.log(f"[resume] {key}: {change['from']!r} -> {change['to']!r} (for the stages still to run; recorded "
                "in state/progress.json and the report)")
    atomic_write_text(ctx.path(RECIPE_FILE), recipe.to_yaml())
    record_changes(state, changes, recipe.to_dict())
    save_progress(ctx.run_dir, state["done"], torch_rng=state.get("torch_rng"), recipe_state=state)


def _holds_only_lock(real: Path) -> bool:
    """A new run's directory, just locked: nothing in it but state/ with the lock file."""
    entries = {p.name for p in real.iterdir()}
    return entries <= {"state"} and {p.name for p in (real / "state").iterdir()} <= {Path(LOCK_FILE).name}


def _run_stages(ctx: Context, recipe: Recipe, store: RunStore, state: dict, notes: dict) -> dict | None:
    final = None
    done = state["done"]
    for name, stage, section in CHAIN:
        if not distributed.is_main() and name in RANK0_ONLY:  # qat, which would train, is refused under torchrun
            continue  # another torchrun rank: only what trains together
        if name == RANK0_ONLY[0] and distributed.world_size() > 1 and distributed.is_main():
            distributed.ranks_done(ctx.run_dir)  # the other ranks have trained: their copies go
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
        if name in notes:  # keys changed on --resume that this stage is the first to read
            record["recipe_changes"] = notes[name]
        store.update({k: v for k, v in result.artifacts.items() if k != "report"})
        final = result.artifacts.get("report", final)
        store.records[name] = done[name] = record
        save_progress(ctx.run_dir, done, torch_rng=get_torch_rng(), recipe_state=state)
        _remove_checkpoints(ctx, name)
    return final


def _remove_checkpoints(ctx: Context, name: str) -> None:
    """A stage's per-epoch checkpoint, and those of schemes with several trainings in one
    stage: transfer learning's head phase (state/teacher.head.ckpt), extra teachers
    (state/teacher.extra<i>.ckpt), born-again generations (state/distill.gen<k>.ckpt)."""
    for path in _checkpoint_files(ctx, name):
        path.unlink(missing_ok=True)


def _checkpoint_files(ctx: Context, name: str) -> list[Path]:
    files = [ctx.path(CHECKPOINTS[name])] if name in CHECKPOINTS else []
    return files + sorted(ctx.path("state").glob(f"{name}.*.ckpt"))
