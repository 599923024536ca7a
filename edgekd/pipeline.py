"""`edgekd compress`: the chain, one function per stage, in the order they run.

    data -> teacher -> distill -> prune (optional) -> export -> quantize -> bench -> report

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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .artifacts import atomic_write_text, load_checkpoint, remove_temp_files
from .errors import ConfigError, ModelFileError
from .recipe import Recipe
from .runstate import (STATE_FILE, _check_torch_rng, _get_torch_rng, _set_torch_rng, deterministic_mode,
                       load_progress, save_progress, seed_everything)

STAGES = ("data", "teacher", "distill", "prune", "export", "quantize", "bench", "report")

# Artifact names inside a run directory
RECIPE_FILE = "recipe.yaml"
TEACHER_WEIGHTS = "teacher.safetensors"
STUDENT_WEIGHTS = "student.safetensors"
PRUNED_WEIGHTS = "pruned.safetensors"
PRUNED_SHAPES = "pruned.shapes.json"  # layer shapes as plain data: no pickled modules
TEACHER_ONNX = "teacher.fp32.onnx"
STUDENT_ONNX = "model.fp32.onnx"
INT8_ONNX = "model.int8.onnx"
EVAL_SET = "eval.npz"
CHECKPOINTS = {"teacher": "state/teacher.ckpt", "distill": "state/distill.ckpt"}  # per-epoch training state


@dataclass
class Run:
    """What the stages share: the recipe, the run directory, data, models, and results."""

    recipe: Recipe
    run_dir: Path
    resume: bool = False  # continue training stages from their checkpoints
    progress: bool = True
    log: Callable[[str], None] = print
    stages: dict = field(default_factory=dict)  # stage name -> its report (plain data)
    splits: object = None
    tensors: dict = field(default_factory=dict)
    teacher: object = None
    student: object = None
    report: dict | None = None

    def path(self, name: str) -> Path:
        return self.run_dir / name


# --------------------------------------------------------------------------------------
# The chain


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
            _check_torch_rng(state["torch_rng"], run.path(STATE_FILE))
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
            _set_torch_rng(state["torch_rng"], run.path(STATE_FILE))
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
        save_progress(run.run_dir, done, torch_rng=_get_torch_rng())
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
    _splits(run)
    _build(run, run.recipe.teacher.arch, run.recipe.teacher.arch_args)
    _build(run, run.recipe.distill.arch, run.recipe.distill.arch_args)
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
    _check_distill_knowledge(run)


def _check_distill_knowledge(run: Run) -> None:
    """Extra teachers build and their weights exist; every layer that distill.terms names
    exists in the student and the (first) teacher. For the schemes that learn from the
    teacher stage (offline, and born-again's first generation) only."""
    from .kd_losses import check_layer
    from .recipe import extra_teacher_configs

    cfg = run.recipe.distill
    if not _learns_from_teacher_stage(cfg):
        return
    for i, extra in enumerate(extra_teacher_configs(cfg), start=1):
        _build(run, extra.arch, extra.arch_args)
        if extra.weights is not None and not Path(extra.weights).is_file():
            raise ModelFileError(f"distill.extra_teachers[{i - 1}].weights '{extra.weights}' does not exist")
    if not cfg.terms:
        return
    student = _build(run, cfg.arch, cfg.arch_args)
    teacher = _build(run, run.recipe.teacher.arch, run.recipe.teacher.arch_args)
    archs = {"student": cfg.arch, "teacher": run.recipe.teacher.arch}
    for i, term in enumerate(cfg.terms):
        for side, model in (("student", student), ("teacher", teacher)):
            for name in term[side] or [None]:  # None: the classifier's input (rkd's default)
                check_layer(model, name, what=f"distill.terms[{i}] ({term['kind']}) {side} {archs[side]}")


def stage_data(run: Run) -> dict:
    """Load and split the dataset; write the test split as the portable eval set."""
    from .data import save_eval_set

    splits = _splits(run)
    save_eval_set(run.path(EVAL_SET), splits.test_x, splits.test_y, splits.spec)
    spec = splits.spec
    return {
        "dataset": spec.name,
        "source": spec.source,
        "shape": [spec.channels, spec.height, spec.width],
        "classes": spec.num_classes,
        "train": len(splits.train_y),
        "val": len(splits.val_y),
        "test": len(splits.test_y),
        "calib": len(splits.calib_y),
    }


def stage_teacher(run: Run) -> dict:
    """Train the teacher, or load its weights (and fine-tune them when epochs > 0)."""
    from .artifacts import load_weights, save_weights
    from .train import accuracy, cross_entropy_step, fit

    cfg = run.recipe.teacher
    t = _tensors(run)
    teacher = _build(run, cfg.arch, cfg.arch_args)
    if cfg.weights is not None:
        load_weights(teacher, cfg.weights)
    result = {}
    if cfg.transfer is not None:  # pretrained backbone, new head: head-only phase, then fine-tuning
        from .transfer import transfer

        phases = transfer(teacher, cfg=cfg, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                          val_y=t["val_y"], seed=run.recipe.seed, progress=run.progress,
                          checkpoint_dir=run.path("state"), resume=run.resume, log=run.log)
        result.update(_fit_summary(phases.pop("fit")))
        result.update(phases)
    elif cfg.epochs > 0:
        fit_result = fit(teacher, cross_entropy_step(teacher), train_x=t["train_x"], train_y=t["train_y"],
                         val_x=t["val_x"], val_y=t["val_y"], cfg=cfg, seed=run.recipe.seed,
                         desc="teacher", progress=run.progress, checkpoint=run.path(CHECKPOINTS["teacher"]),
                         resume=run.resume, log=run.log)
        result.update(_fit_summary(fit_result))
    save_weights(teacher, run.path(TEACHER_WEIGHTS))
    run.teacher = teacher
    result.update(_model_summary(run, teacher, cfg.arch))
    result["val_top1"] = accuracy(teacher, t["val_x"], t["val_y"])
    result["weights"] = TEACHER_WEIGHTS
    run.log(f"[teacher] {cfg.arch}: val top-1 {result['val_top1']:.2f}%")
    if run.recipe.distill.extra_teachers and _learns_from_teacher_stage(run.recipe.distill):
        result["extra_teachers"] = _stage_extra_teachers(run)
    return result


def _learns_from_teacher_stage(cfg) -> bool:
    """Offline KD and born-again's first generation use the teacher(s) of the teacher stage."""
    return cfg.scheme in ("offline", "born-again")


def _extra_teacher_file(i: int) -> str:
    return f"teacher.extra{i}.safetensors"


def _stage_extra_teachers(run: Run) -> list[dict]:
    """Multi-teacher KD: train or load each of distill.extra_teachers like the main teacher,
    with its own per-epoch checkpoint (state/teacher.extra<i>.ckpt, so --resume continues
    it) and weights file (teacher.extra<i>.safetensors)."""
    from .artifacts import load_weights, save_weights
    from .recipe import extra_teacher_configs
    from .train import accuracy, cross_entropy_step, fit

    t = _tensors(run)
    summaries = []
    for i, cfg in enumerate(extra_teacher_configs(run.recipe.distill), start=1):
        model = _build(run, cfg.arch, cfg.arch_args)
        if cfg.weights is not None:
            load_weights(model, cfg.weights)
        summary = {}
        if cfg.epochs > 0:
            fit_result = fit(model, cross_entropy_step(model), train_x=t["train_x"], train_y=t["train_y"],
                             val_x=t["val_x"], val_y=t["val_y"], cfg=cfg, seed=run.recipe.seed + i,
                             desc=f"teacher.extra{i}", progress=run.progress,
                             checkpoint=run.path(f"state/teacher.extra{i}.ckpt"), resume=run.resume, log=run.log)
            summary.update(_fit_summary(fit_result))
        save_weights(model, run.path(_extra_teacher_file(i)))
        summary.update(_model_summary(run, model, cfg.arch))
        summary.update(val_top1=accuracy(model, t["val_x"], t["val_y"]), weights=_extra_teacher_file(i))
        run.log(f"[teacher] extra teacher {i} {cfg.arch}: val top-1 {summary['val_top1']:.2f}%")
        summaries.append(summary)
    return summaries


def _teachers(run: Run) -> list:
    """The main teacher, then the extra teachers (multi-teacher KD) from their weights files."""
    from .recipe import extra_teacher_configs

    extras = [_load_stage_model(run, cfg.arch, cfg.arch_args, _extra_teacher_file(i))
              for i, cfg in enumerate(extra_teacher_configs(run.recipe.distill), start=1)]
    return [_teacher(run), *extras]


def stage_distill(run: Run) -> dict:
    """Knowledge distillation from the frozen teacher(s) into the student: Hinton KD plus
    the feature and relation terms of distill.terms (edgekd.distill)."""
    from .artifacts import save_weights
    from .distill import distill
    from .train import accuracy

    cfg = run.recipe.distill
    if cfg.scheme != "offline":  # online, born-again, ema: edgekd.schemes; offline continues below
        return _distill_scheme(run)
    t = _tensors(run)
    teachers = _teachers(run)  # the teacher, plus distill.extra_teachers (multi-teacher KD)
    student = _build(run, cfg.arch, cfg.arch_args)
    fit_result = distill(student, teachers, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                         val_y=t["val_y"], cfg=cfg, seed=run.recipe.seed, progress=run.progress,
                         checkpoint=run.path(CHECKPOINTS["distill"]), resume=run.resume, log=run.log)
    save_weights(student, run.path(STUDENT_WEIGHTS))
    run.student = student
    result = {**_fit_summary(fit_result), **_model_summary(run, student, cfg.arch)}
    result.update(val_top1=accuracy(student, t["val_x"], t["val_y"]), weights=STUDENT_WEIGHTS,
                  temperature=cfg.temperature, alpha=cfg.alpha, teachers=len(teachers),
                  terms=[term["kind"] for term in cfg.terms])
    run.log(f"[distill] {cfg.arch}: val top-1 {result['val_top1']:.2f}%")
    return result


def _distill_scheme(run: Run) -> dict:
    """distill.scheme online / born-again / ema (edgekd.schemes). The teacher stage still
    runs for every scheme (its row in the report is the reference); online and ema do not
    use it. The model the scheme picks on val (best peer, best generation, student or EMA)
    is the student that continues down the chain."""
    import torch

    from . import schemes
    from .artifacts import save_weights
    from .train import accuracy

    cfg = run.recipe.distill
    t = _tensors(run)
    data = {key: t[key] for key in ("train_x", "train_y", "val_x", "val_y")}
    common = {"cfg": cfg, "seed": run.recipe.seed, "progress": run.progress, "resume": run.resume, "log": run.log}
    if cfg.scheme == "online":
        peers = [_build(run, cfg.arch, cfg.arch_args) for _ in range(cfg.peers)]  # each its own initialization
        outcome = schemes.mutual_learning(peers, **data, **common, checkpoint=run.path(CHECKPOINTS["distill"]))
    elif cfg.scheme == "born-again":
        def fresh_student(generation: int):
            # seeded per generation and outside the global RNG: a resumed run rebuilds the same one
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run.recipe.seed * 1000 + generation)
                return _build(run, cfg.arch, cfg.arch_args)

        outcome = schemes.born_again(_build(run, cfg.arch, cfg.arch_args), _teachers(run), make_student=fresh_student,
                                     **data, **common, checkpoint_dir=run.path("state"))
    else:
        outcome = schemes.ema_self_distill(_build(run, cfg.arch, cfg.arch_args), **data, **common,
                                           checkpoint=run.path(CHECKPOINTS["distill"]))
    student = outcome.student
    save_weights(student, run.path(STUDENT_WEIGHTS))
    run.student = student
    result = {**_fit_summary(outcome.fit), **_model_summary(run, student, cfg.arch), **outcome.details}
    result.update(val_top1=accuracy(student, t["val_x"], t["val_y"]), weights=STUDENT_WEIGHTS,
                  temperature=cfg.temperature, alpha=cfg.alpha)
    run.log(f"[distill] {cfg.scheme}: {cfg.arch} val top-1 {result['val_top1']:.2f}%")
    return result


def stage_prune(run: Run) -> dict:
    """Remove channels from the student, fine-tuning it with KD from the teacher after each
    step (or once at the end): to a share of the channels, a MACs count, or a measured
    latency (prune.target_latency_ms / target_speedup, edgekd.prune_latency)."""
    import dataclasses

    from .artifacts import save_weights
    from .distill import distill
    from .models import count_macs, count_params
    from .prune import channel_table, layer_shapes, prune_channels, sparsity_train
    from .train import accuracy

    cfg = run.recipe.prune
    if not cfg.enabled:
        for name in (PRUNED_WEIGHTS, PRUNED_SHAPES):  # stale files of an earlier --force run
            run.path(name).unlink(missing_ok=True)
        return {"enabled": False}
    t = _tensors(run)
    teacher, student = _teacher(run), _student(run)
    shape = _input_shape(_splits(run).spec)
    before = {"params": count_params(student), "macs": count_macs(student, shape), "channels": channel_table(student)}
    extra = {}
    if cfg.sparsity > 0 and cfg.sparsity_epochs > 0:  # network slimming: push unneeded BN scales to zero
        slim = sparsity_train(student, **t, penalty=cfg.sparsity, seed=run.recipe.seed, progress=run.progress,
                              cfg=dataclasses.replace(cfg, epochs=cfg.sparsity_epochs))
        extra["sparsity"] = {"penalty": cfg.sparsity, "epochs": cfg.sparsity_epochs, "val_top1": slim.best_val_top1}
    finetune = dataclasses.replace(run.recipe.distill, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                   weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, augment=cfg.augment)
    history = []

    def finetune_step(step: int) -> None:
        if finetune.epochs == 0:
            return
        result = distill(student, teacher, train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                         val_y=t["val_y"], cfg=finetune, seed=run.recipe.seed + step, progress=run.progress)
        history.append({"step": step, "macs": count_macs(student, shape), "val_top1": result.best_val_top1})

    each_step = cfg.finetune == "step"
    batch = (t["train_x"][: cfg.batch_size], t["train_y"][: cfg.batch_size])  # gradients for 'taylor'
    if cfg.latency_targeted:
        extra["latency"] = _prune_to_latency(run, student, shape, batch, finetune_step).to_dict()
    else:
        prune_channels(student, input_shape=shape, ratio=cfg.ratio, importance=cfg.importance,
                       global_pruning=cfg.global_pruning, round_to=cfg.round_to, protect=cfg.protect,
                       steps=cfg.steps, loss_batch=batch, after_step=finetune_step if each_step else None,
                       target_macs=cfg.target_macs)
        if not each_step:
            finetune_step(cfg.steps)
    atomic_write_text(run.path(PRUNED_SHAPES), json.dumps(layer_shapes(student), indent=1))
    save_weights(student, run.path(PRUNED_WEIGHTS))
    run.student = student
    after = {"params": count_params(student), "macs": count_macs(student, shape), "channels": channel_table(student)}
    val_top1 = accuracy(student, t["val_x"], t["val_y"])
    run.log(f"[prune] MACs {before['macs']:,} -> {after['macs']:,}, params {before['params']:,} -> "
            f"{after['params']:,}, val top-1 {val_top1:.2f}%")
    return {"enabled": True, "before": before, "after": after, "steps": history, "val_top1": val_top1,
            "params": after["params"], "macs": after["macs"], "weights": PRUNED_WEIGHTS, "shapes": PRUNED_SHAPES,
            **extra}


def _prune_to_latency(run: Run, student, shape, loss_batch, finetune):
    """Latency-targeted pruning of the prune stage: candidates timed in the deployed format
    (int8 when the quantize stage is on) on bench.provider, batch 1, bench.threads. A
    target not reached is a warning, not an error: the most-pruned model goes on."""
    from .bench import session_settings
    from .prune_latency import LatencyTarget, prune_to_latency
    from .train import to_tensor

    cfg, spec = run.recipe.prune, _splits(run).spec
    # 128 calibration images: a candidate is only timed, and quantizing it must stay cheap
    calib = to_tensor(_splits(run).calib_x[:128], spec.mean, spec.std).numpy()
    _, result = prune_to_latency(
        student, input_shape=shape, calib_images=calib,
        target=LatencyTarget(latency_ms=cfg.target_latency_ms, speedup=cfg.target_speedup),
        max_ratio=cfg.ratio, step_ratio=cfg.latency_step, importance=cfg.importance,
        global_pruning=cfg.global_pruning, round_to=cfg.round_to, protect=cfg.protect, loss_batch=loss_batch,
        int8=run.recipe.quantize.enabled, quant_cfg=run.recipe.quantize, provider=run.recipe.bench.provider,
        threads=run.recipe.bench.threads, session_options=session_settings(run.recipe.bench),
        rounds=cfg.latency_rounds, max_macs=cfg.target_macs,
        finetune=finetune, finetune_each_step=cfg.finetune == "step", log=run.log)
    return result


def stage_export(run: Run) -> dict:
    """Teacher and student to fp32 ONNX, each checked against PyTorch."""
    from .export import model_metadata, to_onnx

    spec = _splits(run).spec
    check_inputs = _tensors(run)["val_x"]
    result = {}
    for stage, model, arch, file in (
        ("teacher", _teacher(run), run.recipe.teacher.arch, TEACHER_ONNX),
        ("student", _student(run), run.recipe.distill.arch, STUDENT_ONNX),
    ):
        summary = run.stages["teacher"] if stage == "teacher" else _student_summary(run)
        metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=summary["params"], macs=summary["macs"])
        report = to_onnx(model, run.path(file), input_shape=_input_shape(spec), metadata=metadata,
                         cfg=run.recipe.export, check_inputs=check_inputs)
        result[stage] = {"path": file, "max_abs_diff": {str(b): d for b, d in report.max_abs_diff.items()}}
        run.log(f"[export] {file}: max |onnx - torch| = {max(report.max_abs_diff.values()):.2e}")
    return result


def stage_quantize(run: Run) -> dict:
    """Post-training static int8 (QDQ) of the student with ONNX Runtime, within the accuracy
    budget (quantize.max_drop): if int8 loses more val top-1 than that, its most sensitive
    nodes are kept in float (edgekd.quant_budget); if that is not enough the run fails with
    exit code 3, after writing state/quantize-budget.json."""
    import onnx

    from .bench import evaluate, make_session, preprocess
    from .quantize import detect_machine, format_name, ptq

    cfg = run.recipe.quantize
    if not cfg.enabled:
        run.path(INT8_ONNX).unlink(missing_ok=True)  # a stale int8 model from --force must not be benched
        return {"enabled": False}
    splits = _splits(run)
    fp32 = run.path(STUDENT_ONNX)
    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    meta["edgekd.stage"] = "int8"
    calib = preprocess(splits.calib_x, meta)
    machine = detect_machine()
    if cfg.method == "qat":
        return _quantize_qat(run, cfg, meta=meta, machine=machine)
    report = ptq(fp32, run.path(INT8_ONNX), calib_images=calib, cfg=cfg, metadata=meta, progress=run.progress,
                 machine=machine)
    settings = report.settings
    run.log(f"[quantize] target {settings['target']} (from {settings['target_from']}): {format_name(settings)}, "
            f"reduce_range {settings['reduce_range']}, per_channel {settings['per_channel']}"
            + (f"; set in the recipe: {', '.join(settings['overrides'])}" if settings["overrides"] else ""))
    # val accuracy of the deployed int8 model, as ONNX Runtime runs it (not a simulation)
    val_x = preprocess(splits.val_x, meta)

    def val_top1(path) -> float:
        return evaluate(make_session(path), val_x, splits.val_y)

    int8_val = val_top1(run.path(INT8_ONNX))
    fp32_val = val_top1(fp32)
    run.log(f"[quantize] {INT8_ONNX}: val top-1 {int8_val:.2f}% (fp32 ONNX {fp32_val:.2f}%)")
    result = {
        "method": "ptq",
        "path": INT8_ONNX,
        "target": settings["target"],
        "settings": {k: settings[k] for k in ("target_from", "activation_type", "weight_type", "reduce_range",
                                              "per_channel", "overrides")},
        "calibration": report.calibration,
        "calib_samples": report.samples,
        "calib_batch_size": cfg.calib_batch_size,
        "format": format_name(settings),
        "per_channel": report.per_channel,
        "float_nodes": list(report.excluded_nodes),
        "val_top1_int8": int8_val,
        "val_top1_fp32": fp32_val,
        "max_drop": cfg.max_drop,
    }
    if cfg.max_drop is not None and fp32_val - int8_val > cfg.max_drop:
        result.update(_quantize_budget(run, cfg, calib=calib, meta=meta, machine=machine, evaluate=val_top1,
                                       fp32_val=fp32_val, int8_val=int8_val, partial=result))
    return result


def _quantize_qat(run: Run, cfg, *, meta, machine) -> dict:
    """Quantization-aware KD fine-tuning of the student (edgekd.qat), exported as QDQ ONNX.
    The accuracy budget is checked on the deployed model (ONNX Runtime, val split); there is
    no float-node search for QAT: beyond quantize.max_drop the run fails with exit code 3."""
    from .bench import evaluate, make_session, preprocess
    from .errors import AccuracyBudgetExceeded
    from .qat import prepare_qat, qat
    from .qat_onnx import export_qdq
    from .quantize import format_name, resolve_quant_settings
    from .train import to_tensor

    settings = resolve_quant_settings(cfg, machine)
    splits, t = _splits(run), _tensors(run)
    spec = splits.spec
    qmodel = prepare_qat(_student(run), activation_type=settings["activation_type"],
                         reduce_range=settings["reduce_range"])
    result = qat(qmodel, _teacher(run), train_x=t["train_x"], train_y=t["train_y"], val_x=t["val_x"],
                 val_y=t["val_y"], cfg=cfg.qat, temperature=run.recipe.distill.temperature,
                 alpha=run.recipe.distill.alpha, calib_images=to_tensor(splits.calib_x, spec.mean, spec.std),
                 seed=run.recipe.seed, progress=run.progress, log=run.log)
    export_qdq(qmodel, run.path(INT8_ONNX), input_shape=_input_shape(spec), metadata=meta,
               opset=run.recipe.export.opset)
    val_x = preprocess(splits.val_x, meta)
    int8_val = evaluate(make_session(run.path(INT8_ONNX)), val_x, splits.val_y)
    fp32_val = evaluate(make_session(run.path(STUDENT_ONNX)), val_x, splits.val_y)
    name = format_name(settings) + " (QAT)"
    run.log(f"[quantize] QAT {result.total_steps} steps ({result.observe_steps} observing ranges), target "
            f"{settings['target']}: {name}; {INT8_ONNX}: val top-1 {int8_val:.2f}% (fake-quant PyTorch "
            f"{result.val_top1:.2f}%, fp32 ONNX {fp32_val:.2f}%)")
    record = {
        "method": "qat", "path": INT8_ONNX, "target": settings["target"], "format": name,
        "settings": {k: settings[k] for k in ("target_from", "activation_type", "weight_type", "reduce_range",
                                              "per_channel", "overrides")},
        "qat": {**_fit_summary(result.fit), "steps": result.total_steps, "observe_steps": result.observe_steps,
                "activation_quantizers": result.activation_quantizers, "seconds": round(result.seconds, 3)},
        "val_top1_int8": int8_val, "val_top1_fake_quant": result.val_top1, "val_top1_fp32": fp32_val,
        "max_drop": cfg.max_drop, "float_nodes": [],
    }
    if cfg.max_drop is not None and fp32_val - int8_val > cfg.max_drop:
        atomic_write_text(run.path("state/quantize-budget.json"), json.dumps(record, indent=2))
        run.path(INT8_ONNX).unlink(missing_ok=True)
        raise AccuracyBudgetExceeded(
            f"QAT int8 loses {fp32_val - int8_val:.2f} points of val top-1 (fp32 {fp32_val:.2f}%, int8 "
            f"{int8_val:.2f}%); quantize.max_drop is {cfg.max_drop}. See {run.path('state/quantize-budget.json')}; "
            f"train longer (quantize.qat.epochs), raise the budget, or use quantize.method: ptq. {STUDENT_ONNX} is kept")
    return record


def _quantize_budget(run: Run, cfg, *, calib, meta, machine, evaluate, fp32_val, int8_val, partial) -> dict:
    """The budget search; its result goes to state/quantize-budget.json whether it succeeds or not."""
    from .errors import AccuracyBudgetExceeded
    from .quant_budget import search

    run.log(f"[quantize] int8 loses {fp32_val - int8_val:.2f} points of val top-1, more than quantize.max_drop "
            f"{cfg.max_drop}: keeping the most sensitive nodes in float")
    import shutil
    import tempfile

    from .quant_budget import quick_p50_ms

    with tempfile.TemporaryDirectory(prefix="edgekd-budget-") as work:
        all_int8 = Path(work) / "all-int8.onnx"  # to price the float nodes in latency afterwards
        shutil.copyfile(run.path(INT8_ONNX), all_int8)
        budget = search(run.path(STUDENT_ONNX), run.path(INT8_ONNX), calib_images=calib, cfg=cfg, evaluate=evaluate,
                        fp32_top1=fp32_val, int8_top1=int8_val, metadata=meta, machine=machine, log=run.log)
        latency = None
        if budget.met:
            p50 = quick_p50_ms([run.path(STUDENT_ONNX), all_int8, run.path(INT8_ONNX)], calib[0])
            latency = dict(zip(("fp32", "int8_all_quantized", "int8_with_float_nodes"), p50))
            run.log(f"[quantize] rough p50 (batch 1): fp32 {p50[0]:.3f} ms, all int8 {p50[1]:.3f} ms, "
                    f"with the float nodes {p50[2]:.3f} ms")
    summary = {"met": budget.met, "kept_float": budget.excluded, "val_top1_int8": budget.final_top1,
               "drop": budget.drop, "steps": budget.steps, "sensitivity": budget.sensitivity,
               "max_excluded": budget.max_excluded, "seconds": budget.seconds,
               "val_top1_int8_all_quantized": int8_val, "rough_p50_ms": latency}
    record = {**partial, "budget": summary}
    if budget.met:
        record.update(val_top1_int8=budget.final_top1, float_nodes=list(partial["float_nodes"]) + budget.excluded)
    atomic_write_text(run.path("state/quantize-budget.json"), json.dumps(record, indent=2))
    if not budget.met:
        run.path(INT8_ONNX).unlink(missing_ok=True)  # it failed the gate: nothing to bench or deploy
        raise AccuracyBudgetExceeded(
            f"int8 loses {budget.drop:.2f} points of val top-1 (fp32 {fp32_val:.2f}%, int8 {budget.final_top1:.2f}%) "
            f"even with {len(budget.excluded)} node(s) kept in float ({', '.join(budget.excluded) or 'none'}); "
            f"quantize.max_drop is {cfg.max_drop}. See {run.path('state/quantize-budget.json')}; raise the budget, "
            f"set quantize.max_drop: null, or quantize.enabled: false. {STUDENT_ONNX} is kept")
    run.log(f"[quantize] within budget with {len(budget.excluded)} node(s) in float: val top-1 "
            f"{budget.final_top1:.2f}% (drop {budget.drop:.2f})")
    return {"val_top1_int8": budget.final_top1, "float_nodes": record["float_nodes"], "budget": summary}


def stage_bench(run: Run) -> dict:
    """Latency and test accuracy of every ONNX model of the run on the configured provider."""
    from .bench import bench_run_dir, to_json

    rows = bench_run_dir(run.run_dir, run.recipe.bench, progress=run.progress)
    bench_json = to_json(rows, cfg=run.recipe.bench)
    atomic_write_text(run.path("state/bench.json"), json.dumps(bench_json, indent=2))
    warnings = int8_speed_warnings(rows)
    for line in warnings:
        run.log(f"[bench] warning: {line}")
    return {"models": [r.name for r in rows], "provider": run.recipe.bench.provider, "warnings": warnings}


def int8_speed_warnings(rows) -> list[str]:
    """A warning when the int8 model's median latency is not below the fp32 student's."""
    by_name = {Path(r.path).name: r for r in rows}
    fp32, int8 = by_name.get(STUDENT_ONNX), by_name.get(INT8_ONNX)
    if fp32 is None or int8 is None:
        return []
    f, i = fp32.latency_ms["p50"], int8.latency_ms["p50"]
    if i < f:
        return []
    return [f"{INT8_ONNX} is not faster than {STUDENT_ONNX} on {int8.provider}: p50 {i:.3f} ms vs {f:.3f} ms "
            f"({int8.int8_ops if int8.int8_ops is not None else '?'} int8 kernels); check quantize.target and "
            f"activation_type for this CPU (S8S8 QDQ convolutions can be slower than fp32 on x86)"]


def stage_report(run: Run) -> dict:
    """report.json, report.md, results.csv and pareto.png."""
    from .report import build_report, write_report

    bench_json = json.loads(run.path("state/bench.json").read_text())
    stages = {k: v for k, v in run.stages.items() if k != "report"}
    run.report = build_report(recipe=run.recipe.to_dict(), stages=stages, bench_json=bench_json)
    paths = write_report(run.report, run.run_dir)
    return {"files": sorted(p.name for p in paths.values())}


# --------------------------------------------------------------------------------------
# Shared helpers: lazily loaded data and models, so a resumed run rebuilds only what the
# remaining stages need.


def _splits(run: Run):
    if run.splits is None:
        from .data import load_splits

        run.splits = load_splits(run.recipe.data, seed=run.recipe.seed)
    return run.splits


def _tensors(run: Run) -> dict:
    if not run.tensors:
        import torch

        from .train import to_tensor

        s = _splits(run)
        run.tensors = {
            "train_x": to_tensor(s.train_x, s.spec.mean, s.spec.std),
            "train_y": torch.from_numpy(s.train_y.astype(np.int64)),
            "val_x": to_tensor(s.val_x, s.spec.mean, s.spec.std),
            "val_y": torch.from_numpy(s.val_y.astype(np.int64)),
        }
    return run.tensors


def _build(run: Run, arch: str, arch_args: dict):
    from .models import build_model

    spec = _splits(run).spec
    return build_model(arch, in_channels=spec.channels, num_classes=spec.num_classes, **arch_args)


def _load_stage_model(run: Run, arch: str, arch_args: dict, weights: str, shapes: str | None = None):
    """A stage's model from its weights file; `shapes`: the pruned layer shapes to rebuild first."""
    import torch

    from .artifacts import load_weights

    path = run.path(weights)
    if not path.is_file():
        raise ModelFileError(f"'{path}' is missing; the run directory is incomplete, start a new run")
    # the initial weights are overwritten: leave the global RNG as it was, so that a resumed
    # run builds the student from the same RNG state as an uninterrupted one
    with torch.random.fork_rng(devices=[]):
        model = _build(run, arch, arch_args)
    if shapes is not None:
        from .prune import rebuild

        try:
            rebuild(model, json.loads(run.path(shapes).read_text()))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read pruned shapes '{run.path(shapes)}': {exc}; start a new run") from exc
    load_weights(model, path)
    return model.eval()


def _teacher(run: Run):
    if run.teacher is None:
        cfg = run.recipe.teacher
        run.teacher = _load_stage_model(run, cfg.arch, cfg.arch_args, TEACHER_WEIGHTS)
    return run.teacher


def _student(run: Run):
    """The student as the last stage left it: pruned when pruning ran, else distilled."""
    if run.student is None:
        cfg = run.recipe.distill
        if _pruned(run):
            run.student = _load_stage_model(run, cfg.arch, cfg.arch_args, PRUNED_WEIGHTS, shapes=PRUNED_SHAPES)
        else:
            run.student = _load_stage_model(run, cfg.arch, cfg.arch_args, STUDENT_WEIGHTS)
    return run.student


def _pruned(run: Run) -> bool:
    return bool(run.stages.get("prune", {}).get("enabled"))


def _student_summary(run: Run) -> dict:
    return run.stages["prune"] if _pruned(run) else run.stages["distill"]


def _input_shape(spec) -> tuple[int, int, int]:
    return (spec.channels, spec.height, spec.width)


def _model_summary(run: Run, model, arch: str) -> dict:
    from .models import count_macs, count_params

    return {"arch": arch, "params": count_params(model), "macs": count_macs(model, _input_shape(_splits(run).spec))}


def _fit_summary(fit_result) -> dict:
    return {
        "epochs": fit_result.epochs,
        "best_epoch": fit_result.best_epoch,
        "train_seconds": round(fit_result.seconds, 3),
        "images_per_second": round(fit_result.images_per_second, 1),
    }


# --------------------------------------------------------------------------------------
# `edgekd export`: one model, outside the chain


def export_one(*, run_dir=None, stage="student", weights=None, arch=None, arch_args=None,
               data_name="fashion-mnist-subset", data_path=None, int8=False, output=None, opset=17,
               force=False, progress=True) -> dict:
    """Export a run's stage, or a weights file plus an architecture, to ONNX (optionally int8).

    Returns the path, the fp32 parity per batch size and, for int8, the argmax agreement
    of the int8 model with PyTorch on val images.
    """
    import dataclasses
    import tempfile

    import torch

    from .artifacts import load_weights
    from .data import load_splits
    from .export import model_metadata, to_onnx
    from .models import build_model, count_macs, count_params
    from .recipe import DataConfig, ExportConfig
    from .train import to_tensor

    precision = "int8" if int8 else "fp32"
    if run_dir is not None:
        run_dir = Path(run_dir)
        recipe = Recipe.from_yaml(run_dir / RECIPE_FILE)
        cfg = recipe.teacher if stage == "teacher" else recipe.distill
        arch, arch_args = cfg.arch, cfg.arch_args
        weights = run_dir / (TEACHER_WEIGHTS if stage == "teacher" else STUDENT_WEIGHTS)
        data_cfg, seed, quant_cfg = recipe.data, recipe.seed, recipe.quantize
        export_cfg = dataclasses.replace(recipe.export, opset=opset)
        default_output = run_dir / "export" / f"{stage}.{precision}.onnx"
    else:
        from .recipe import QuantConfig

        data_cfg, seed, quant_cfg = DataConfig(name=data_name, path=data_path), 0, QuantConfig()
        export_cfg = ExportConfig(opset=opset)
        stage = "student"
        default_output = Path(weights).with_suffix(f".{precision}.onnx")
    output = Path(output) if output else default_output
    if output.exists() and not force:
        raise ConfigError(f"'{output}' already exists; use --force to replace it or -o for another file")

    splits = load_splits(data_cfg, seed=seed)
    spec = splits.spec
    model = build_model(arch, in_channels=spec.channels, num_classes=spec.num_classes, **(arch_args or {}))
    if run_dir is not None and stage == "student" and (run_dir / PRUNED_SHAPES).is_file():
        from .prune import rebuild  # the run pruned its student: export the pruned model

        rebuild(model, json.loads((run_dir / PRUNED_SHAPES).read_text()))
        weights = run_dir / PRUNED_WEIGHTS
    load_weights(model, weights)
    model.eval()
    input_shape = (spec.channels, spec.height, spec.width)
    metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=count_params(model),
                              macs=count_macs(model, input_shape))
    val_x = to_tensor(splits.val_x, spec.mean, spec.std)
    result = {"path": str(output)}
    if not int8:
        report = to_onnx(model, output, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x)
        result["max_abs_diff"] = report.max_abs_diff
        return result

    from .bench import make_session
    from .quantize import ptq

    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as work:
        fp32 = Path(work) / "model.fp32.onnx"
        report = to_onnx(model, fp32, input_shape=input_shape, metadata=metadata, cfg=export_cfg, check_inputs=val_x)
        calib = to_tensor(splits.calib_x, spec.mean, spec.std).numpy()
        ptq(fp32, output, calib_images=calib, cfg=quant_cfg, metadata={**metadata, "edgekd.stage": "int8"},
            progress=progress)
    # int8 cannot match fp32 to 1e-4; what must hold is that it predicts the same classes
    (logits,) = make_session(output).run(None, {"input": val_x.numpy()})
    with torch.no_grad():
        expected = model(val_x).argmax(1).numpy()
    result["max_abs_diff"] = report.max_abs_diff
    result["int8_top1_agreement"] = float((logits.argmax(1) == expected).mean() * 100)
    result["agreement_samples"] = len(expected)
    return result
