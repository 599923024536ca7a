"""`edgekd compress`: flags -> the recipe (Recipe.replace), then edgekd.api.compress."""

from __future__ import annotations

from pathlib import Path

import click

from edgekd.cli.group import verbosity_options
from edgekd.data.formats import FORMATS
from edgekd.errors import ConfigError
from edgekd.pipeline.rundir import run_recipe


@click.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set teacher.epochs=3 (repeatable; VALUE is YAML).")
@click.option("--data", "data_name", metavar="NAME|PATH",
              help=f"Dataset: a registered name ({', '.join(FORMATS.names())}; the first is embedded) or a path "
                   "to an .npz file, an IDX folder, a .csv/.jsonl manifest or an image folder (FOLDER/<class>/*, "
                   "20% of each class held out for test, or FOLDER/train/<class>/* with FOLDER/test/<class>/*).")
@click.option("--data-path", metavar="DIR", help="Where to look for the dataset's files.")
@click.option("--seed", type=int, help="Random seed for data splits, initialization and order.")
@click.option("--name", help="Run name (the default output folder is runs/NAME).")
@click.option("--out", "out_dir", type=click.Path(),
              help="Run directory. Default: runs/NAME, or runs/NAME-2, -3... if taken.")
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the run in this directory from its last completed stage and, within a training "
                   "stage, from its last completed epoch (uses its recipe.yaml; --set may change keys of the "
                   "stages still to run).")
@click.option("--deterministic", is_flag=True,
              help="Use deterministic PyTorch algorithms only (sets the recipe's deterministic: true), so that "
                   "reruns and resumed runs give the same weights.")
@click.option("--device", metavar="auto|cpu|cuda[:N]",
              help="Where training runs (the recipe's device; default auto: a CUDA GPU when torch sees one, "
                   "else the CPU). May change on --resume.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Training precision (compute.precision; default auto: bf16 on CPUs with AVX512-BF16/AMX "
                   "and on GPUs that have it, fp16 on other GPUs, else fp32).")
@click.option("--baseline", is_flag=True,
              help="Also train the student alone (cross-entropy only, same initialization, schedule and steps) and "
                   "report distillation's gain (sets distill.baseline: true).")
@click.option("--force", is_flag=True, help="Start again in the --out directory of an earlier run, replacing its artifacts.")
@verbosity_options
def compress(recipe, overrides, data_name, data_path, seed, name, out_dir, resume_dir, deterministic, device,
             precision, baseline, force, quiet, verbose):
    """Distill, quantize, export and benchmark, from a RECIPE (YAML).

    With no RECIPE, runs the built-in default: a ResNet-8 teacher distilled into a
    TinyCNN student on the Fashion-MNIST subset shipped with edgekd, int8 through
    ONNX Runtime, benched on the CPU. The run directory gets the resolved recipe,
    weights, model.fp32.onnx, model.int8.onnx, eval.npz and report.{json,md}.
    """
    from edgekd.extras import require_train

    require_train("edgekd compress")  # before a recipe is read or a run directory made
    from edgekd.api import new_run, run_compress
    from edgekd.recipe import Recipe, check_override_pairs

    check_override_pairs(overrides, recipe)  # before RECIPE, which may be the value of a --set without '='

    if resume_dir is not None:
        if (recipe or data_name or data_path or seed is not None or name or out_dir or force or deterministic
                or precision or baseline):
            raise ConfigError("--resume takes the run's own recipe.yaml; give no recipe or run options other than "
                              "--set (for keys of the stages still to run)")
        run_dir = Path(resume_dir)
        resolved = run_recipe(run_dir, overrides)
        if device:
            resolved = resolved.replace(device=device)
    else:
        resolved = Recipe.from_yaml(recipe, overrides) if recipe else Recipe.default(overrides)
        flags = {"data__name": data_name, "data__path": data_path, "seed": seed, "name": name,
                 "deterministic": True if deterministic else None, "device": device, "compute__precision": precision,
                 "distill__baseline": True if baseline else None}
        resolved = resolved.replace(**{k: v for k, v in flags.items() if v is not None})
        # here, not in the API, so that the resume hint below knows it; the RECIPE file too must
        # survive the run that --force replaces
        run_dir = new_run(resolved, out_dir, force, {"RECIPE": recipe})
    ctx = click.get_current_context()
    ctx.obj["run_dir"] = str(run_dir)  # for the resume hint after Ctrl-C, SIGTERM or a full disk

    from edgekd.pipeline.report import summary_table

    report = run_compress(resolved, run_dir, resume=resume_dir is not None, force=force, progress=not quiet)
    if not report:  # another torchrun rank: rank 0 prints the table
        return
    click.echo(summary_table(report))
    click.echo(f"\nReport: {run_dir / 'report.md'}  Models: {run_dir / 'model.int8.onnx'}")
