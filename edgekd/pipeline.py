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

import json
import time
from pathlib import Path
from typing import Callable

from .artifacts import atomic_write_text, load_checkpoint, remove_temp_files
from .errors import ConfigError, ModelFileError
from .recipe import Recipe
from .runstate import (STATE_FILE, _check_torch_rng, _get_torch_rng, _set_torch_rng, deterministic_mode,
                       load_progress, save_progress, seed_everything)

from .run import (STAGES, RECIPE_FILE, TEACHER_WEIGHTS, STUDENT_WEIGHTS, PRUNED_WEIGHTS, PRUNED_SHAPES,
                  TEACHER_ONNX, STUDENT_ONNX, INT8_ONNX, EVAL_SET, CHECKPOINTS, Run, run_splits, run_tensors,
                  build_arch, teacher_of, student_of, student_summary, input_shape_of)
from .stage_prune import stage_prune
from .stage_quantize import stage_quantize
from .stages_train import check_distill_knowledge, stage_distill, stage_teacher


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


def stage_data(run: Run) -> dict:
    """Load and split the dataset; write the test split as the portable eval set."""
    from .data import save_eval_set

    splits = run_splits(run)
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


def stage_export(run: Run) -> dict:
    """Teacher and student to fp32 ONNX, each checked against PyTorch."""
    from .export import model_metadata, to_onnx

    spec = run_splits(run).spec
    check_inputs = run_tensors(run)["val_x"]
    result = {}
    for stage, model, arch, file in (
        ("teacher", teacher_of(run), run.recipe.teacher.arch, TEACHER_ONNX),
        ("student", student_of(run), run.recipe.distill.arch, STUDENT_ONNX),
    ):
        summary = run.stages["teacher"] if stage == "teacher" else student_summary(run)
        metadata = model_metadata(stage=stage, arch=arch, spec=spec, params=summary["params"], macs=summary["macs"])
        report = to_onnx(model, run.path(file), input_shape=input_shape_of(spec), metadata=metadata,
                         cfg=run.recipe.export, check_inputs=check_inputs)
        result[stage] = {"path": file, "max_abs_diff": {str(b): d for b, d in report.max_abs_diff.items()}}
        run.log(f"[export] {file}: max |onnx - torch| = {max(report.max_abs_diff.values()):.2e}")
    return result


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
