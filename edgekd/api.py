"""The Python API: what the three commands do, as functions. The CLI calls these.

    import edgekd

    report = edgekd.compress()                                   # the default run, like `edgekd compress`
    report = edgekd.compress("recipe.yaml", "runs/mine")         # or a Recipe, or a dict
    print(report["models"][-1]["top1"], report["speedup_vs_teacher"])

    edgekd.export("runs/mine", int8=True)                        # like `edgekd export runs/mine --onnx --int8`
    result = edgekd.bench(["runs/mine/model.int8.onnx"], data="runs/mine/eval.npz", runs=500)
    print(result["models"][0]["latency_ms"]["p50"])

Nothing heavy is imported here: `import edgekd` loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from edgekd.runtime.ranking import DEFAULT_TOLERANCE  # light: `import edgekd` loads no config module


def compress(recipe=None, run_dir=None, *, resume: bool = False, force: bool = False, progress: bool = False) -> dict:
    """Run the chain (teacher -> distill -> prune -> export -> quantize -> bench -> report)
    and return the report (report.json's content).

    recipe: a Recipe, a YAML file's path, a dict of sections, or None for the default run
    (with resume=True: None means the run's own recipe.yaml).
    run_dir: where the run goes; None picks runs/<name>, runs/<name>-2, ... A run directory
    must be new or empty, unless resume=True (continue it; the recipe may differ from the
    run's only in keys of the stages still to run) or force=True (start again in an earlier
    run's directory, replacing its artifacts). A directory another run is using is refused.
    """
    from edgekd.extras import require_train

    require_train("edgekd.compress")
    from edgekd.errors import ConfigError
    from edgekd.pipeline.rundir import run_recipe
    from edgekd.recipe import Recipe

    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir, the run to continue")
    recipe_file = None
    if recipe is None:
        recipe = run_recipe(run_dir) if resume else Recipe()
    elif isinstance(recipe, (str, Path)):
        recipe_file, recipe = recipe, Recipe.from_yaml(recipe)
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    with visible_log():
        if not resume:  # the recipe file too must survive the run that force replaces
            run_dir = new_run(recipe, run_dir, force, {"recipe": recipe_file})
        return run_compress(recipe, Path(run_dir), resume=resume, force=force, progress=progress)


@contextlib.contextmanager
def visible_log():
    """The run's messages (one line per training epoch among them) go to the `edgekd` logger.
    Where nothing is configured (a plain script, a notebook), Python would show only warnings:
    then, for this call, INFO lines go to stderr through one handler of our own. Where the CLI
    or the user configured logging (a handler on `edgekd` or on the root), it is left as it is."""
    import logging
    import sys

    logger = logging.getLogger("edgekd")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)  # the stderr of the moment: a notebook's cell output
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def new_run(recipe, run_dir, force: bool, files: dict) -> Path:
    """The directory of a new run, picked and checked once per compress (by the CLI too, which
    needs it first), before preflight: `run_dir`, or the first free runs/NAME, runs/NAME-2...
    (rundir.new_run_dir), with the recipe's input files and `files` ({label: a file the
    caller read}) outside it. Under torchrun only rank 0 picks and checks it; the others only
    name it and get its real path from rank 0 (edgekd.pipeline.chain.compress)."""
    from edgekd.pipeline.layout import RUNS_FOLDER
    from edgekd.pipeline.rundir import check_inputs_outside, new_run_dir, real_run_dir
    from edgekd.train.distributed import is_main

    if not is_main():
        return Path(run_dir or Path(RUNS_FOLDER) / recipe.name)
    path = new_run_dir(recipe.name, run_dir, force)
    check_inputs_outside(recipe, real_run_dir(path), files)
    return path


def run_compress(recipe, run_dir: Path, *, resume: bool, force: bool, progress: bool) -> dict:
    """The chain in `run_dir` (new_run's, or the run to resume) and its report; {} on a torchrun
    rank other than 0, which trains in its copy inside the run that rank 0 owns, with the report."""
    import json

    from edgekd.pipeline.chain import compress as run_chain
    from edgekd.pipeline.rundir import real_run_dir
    from edgekd.train.distributed import is_main

    if not is_main():
        run_chain(recipe, run_dir, resume=resume, force=force, progress=False)
        return {}
    report = run_chain(recipe, run_dir, resume=resume, force=force, progress=progress)
    if report is None:  # every stage was already done
        report = json.loads((real_run_dir(run_dir) / "report.json").read_text())
    return report


def export(run_dir=None, *, stage: str = "student", weights=None, arch: str | None = None,
           arch_args: dict | None = None, data: str | None = None, data_path=None, int8: bool = False,
           output=None, opset: int | None = None, force: bool = False, progress: bool = False, input_size=None,
           dynamic_hw: bool = False, fp16: bool = False, fp32_io: bool = False, name: str | None = None,
           preprocess: dict | None = None, skip_bad: bool = False, num_classes: int | None = None,
           in_channels: int | None = None) -> dict:
    """One model to ONNX, validated against PyTorch: a run's `stage` (student or teacher), or
    `weights` of `arch` for the dataset `data` (None: their own shape decides: the recipe's
    DataConfig.name when it is that dataset's, else no dataset, num_classes / in_channels
    / input_size giving the shape where the file does not; parity on random inputs then), in
    ONNX opset `opset` (None: the recipe's, ExportConfig.opset). Returns the path, the parity
    per batch size and, with int8, the argmax agreement with PyTorch. input_size (H, W), dynamic_hw, fp16 (with
    fp32_io), and the labels stage / name: as `edgekd export --help` says. preprocess: with
    `weights`, the preprocessing they were trained with, written into the metadata
    ({"preset": "imagenet"}, or mean, std, scale, channel_order, crop_fraction; see
    edgekd.runtime.preprocessing). skip_bad: with `weights` and a dataset of image files, files
    that cannot be decoded are skipped (result["data_skipped"]) instead of refused."""
    arguments = dict(locals())  # first: the keywords above, by name (ExportRequest's fields)
    from edgekd.extras import require_train

    require_train("edgekd.export")
    from edgekd.pipeline.export_command import ExportRequest, export_one

    return export_one(ExportRequest.from_arguments(arguments))


def bench(models, *, data=None, batch_sizes=None, threads=None, reference=None, progress: bool = False,
          accuracy_tolerance: float = DEFAULT_TOLERANCE, **settings) -> dict:
    """Latency and accuracy of ONNX `models` (files, or one run directory) on ONNX Runtime;
    returns the JSON report (schema edgekd.bench/1). data: an eval set (.npz), a dataset's name
    or an image folder; batch_sizes / threads: one value or a list to sweep (None: the
    recipe's bench.batch_size / bench.threads); settings: the fields of the recipe's `bench`
    section (provider, runs, warmup, interleave, preprocess={"preset": "imagenet", "layout":
    "NHWC"}, ...).
    provider may be a comma list ("cpu,openvino") or "all" (every installed provider): each
    model runs on each, and the report's provider_ranking names the fastest per model and the
    fastest whose top-1 stays within accuracy_tolerance points of the CPU provider's. A model
    a provider cannot load or run is an entry of the report's "failed" list."""
    from edgekd.errors import ConfigError
    from edgekd.runtime.bench import Sweep, bench_run_dir, check_sweep, to_json
    from edgekd.runtime.bench import bench as bench_files
    from edgekd.runtime.config import BenchConfig
    from edgekd.runtime.measure import check_protocol
    from edgekd.runtime.providers import expand_providers
    from edgekd.runtime.ranking import check_tolerance, rank_providers

    models = [models] if isinstance(models, (str, Path)) else list(models)
    batch_sizes = BenchConfig.batch_size if batch_sizes is None else batch_sizes
    threads = BenchConfig.threads if threads is None else threads
    batch_sizes = list(batch_sizes) if isinstance(batch_sizes, (list, tuple)) else [batch_sizes]
    threads = list(threads) if isinstance(threads, (list, tuple)) else [threads]
    check_sweep(batch_sizes, threads, settings.get("inter_threads", 0))
    # NaN, inf, negative or huge durations and run counts: exit 2 before BenchConfig and any model
    check_protocol(**{k: settings[k] for k in ("warmup", "runs", "min_seconds", "warmup_seconds") if k in settings})
    tolerance = check_tolerance(accuracy_tolerance)
    providers, skipped = expand_providers(settings.get("provider", BenchConfig.provider))
    if not providers:
        raise ConfigError(f"--provider all: no installed provider can run here ({'; '.join(skipped)})")
    settings["provider"] = providers[0]
    cfg = BenchConfig(batch_size=batch_sizes[0], threads=threads[0], **settings)
    sweep = {"batch_sizes": batch_sizes, "threads": threads}
    run = {"sweep": Sweep(batch_sizes, threads, providers), "keep_failures": True}
    if len(models) == 1 and Path(models[0]).is_dir():
        rows = bench_run_dir(Path(models[0]), cfg, progress=progress, eval_set=data, reference=reference, **run)
    else:
        rows = bench_files(models, eval_set=data, cfg=cfg, progress=progress, reference=reference, **run)
    if len(providers) > 1:
        sweep["providers"] = providers
    report = to_json(rows, {"sweep": sweep}, cfg=cfg)
    if len(providers) > 1:
        report["provider_ranking"] = rank_providers(report["models"], report["failed"], tolerance)
    if skipped:
        report["providers_skipped"] = skipped  # --provider all: installed plugins without a device
    return report
