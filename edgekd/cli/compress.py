"""TODO docstring (cli -> cli.compress)"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekd.errors import ConfigError


@click.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set teacher.epochs=3 (repeatable; VALUE is YAML).")
@click.option("--data", "data_name", metavar="NAME|PATH",
              help="Dataset: fashion-mnist-subset (embedded), fashion-mnist, mnist, cifar10, cifar100, "
                   "imagefolder, npz, or a path to an .npz file or IDX folder.")
@click.option("--data-path", metavar="DIR", help="Where to look for the dataset's files.")
@click.option("--seed", type=int, help="Random seed for data splits, initialization and order.")
@click.option("--name", help="Run name (the default output folder is runs/NAME).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Run directory. Default: runs/NAME, or runs/NAME-2, -3... if taken.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this directory from its last completed stage and, within a training "
                   "stage, from its last completed epoch (uses its recipe.yaml).")
@click.option("--deterministic", is_flag=True,
              help="Use deterministic PyTorch algorithms only (sets the recipe's deterministic: true), so that "
                   "reruns and resumed runs give the same weights.")
@click.option("--force", is_flag=True, help="Reuse an existing --out directory, replacing its artifacts.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def compress(recipe, overrides, data_name, data_path, seed, name, out_dir, resume_dir, deterministic, force, quiet):
    """Distill, quantize, export and benchmark, from a RECIPE (YAML).

    With no RECIPE, runs the built-in default: a ResNet-8 teacher distilled into a
    TinyCNN student on the Fashion-MNIST subset shipped with edgekd, int8 through
    ONNX Runtime, benched on the CPU. The run directory gets the resolved recipe,
    weights, model.fp32.onnx, model.int8.onnx, eval.npz and report.{json,md}.
    """
    from edgekd.recipe import Recipe

    if resume_dir is not None:
        if (recipe or overrides or data_name or data_path or seed is not None or name or out_dir or force
                or deterministic):
            raise ConfigError("--resume takes the run's own recipe.yaml; give no recipe, --set or other run options")
        run_dir = Path(resume_dir)
        if not (run_dir / "recipe.yaml").is_file():
            raise ConfigError(f"'{run_dir}' is not an edgekd run directory (no recipe.yaml); nothing to resume")
        resolved = Recipe.from_yaml(run_dir / "recipe.yaml")
    else:
        extra = list(overrides)
        if data_name:
            extra.append(f"data.name={json.dumps(data_name)}")
        if data_path:
            extra.append(f"data.path={json.dumps(data_path)}")
        if seed is not None:
            extra.append(f"seed={seed}")
        if name:
            extra.append(f"name={json.dumps(name)}")
        if deterministic:
            extra.append("deterministic=true")
        resolved = Recipe.from_yaml(recipe, extra) if recipe else Recipe.default(extra)
        run_dir = new_run_dir(resolved.name, out_dir, force)
    ctx = click.get_current_context()
    ctx.obj["run_dir"] = str(run_dir)  # for the resume hint after Ctrl-C, SIGTERM or a full disk

    from edgekd.pipeline.chain import compress as run_compress

    report = run_compress(resolved, run_dir, resume=resume_dir is not None, progress=not quiet,
                          log=lambda line: click.echo(line, err=True))
    if report is None:  # every stage was already done
        report = json.loads((run_dir / "report.json").read_text())
    from edgekd.pipeline.report import summary_table

    click.echo(summary_table(report))
    click.echo(f"\nReport: {run_dir / 'report.md'}  Models: {run_dir / 'model.int8.onnx'}")


def new_run_dir(name: str, out_dir: str | None, force: bool) -> Path:
    """Never overwrite a run silently: an explicit --out that exists needs --force;
    the default picks the first free runs/NAME, runs/NAME-2, ..."""
    if out_dir is not None:
        path = Path(out_dir)
        if path.exists() and any(path.iterdir()) and not force:
            raise ConfigError(
                f"run directory '{path}' already exists; use --resume {path} to continue it, "
                "--force to replace its artifacts, or another --out"
            )
        return path
    base = Path("runs") / name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{name}-{n}")
    return path
