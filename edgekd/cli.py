"""The `edgekd` command: compress, export, bench.

Flags become recipe fields; errors become one line on stderr and a distinct exit code
(see errors.py), with the traceback only under --debug. Heavy modules (torch, the
pipeline) are imported inside the commands that need them, so `edgekd bench` runs on a
device that has only onnxruntime, numpy and click.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import ConfigError, EdgekdError
from .recipe import parse_yaml_mapping

EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # SIGTERM


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that `finally` blocks and atomic writes clean up.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way up
    (e.g. around reading a file) turns a termination into some other error."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


class EdgekdGroup(click.Group):
    """Turns every error into one line and an exit code."""

    def invoke(self, ctx):
        debug = bool(os.environ.get("EDGEKD_DEBUG"))
        try:
            return super().invoke(ctx)
        except EdgekdError as exc:
            _fail(exc, exc.exit_code, debug or _debug(ctx))
        except KeyboardInterrupt:
            click.echo(f"\nedgekd: interrupted; {_kept(ctx)}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Terminated:
            click.echo(f"edgekd: terminated; {_kept(ctx)}", err=True)
            sys.exit(EXIT_TERMINATED)
        except OSError as exc:  # disk full, permission denied, ...: the user can act on these
            _fail(exc, 1, debug or _debug(ctx), prefix="", hint=_resume_hint(ctx) if exc.errno == errno.ENOSPC else "")
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug: say so, point at --debug
            _fail(exc, 1, debug or _debug(ctx), prefix="internal error: ", hint=" (run with --debug for the traceback)")


def _debug(ctx) -> bool:
    return bool(ctx.obj and ctx.obj.get("debug"))


def _run_dir(ctx) -> str | None:
    """The run directory of `edgekd compress` once it is known (None for export, bench)."""
    return ctx.obj.get("run_dir") if ctx.obj else None


def _kept(ctx) -> str:
    if _run_dir(ctx) is None:
        return "nothing was left half-written"
    return f"completed stages and epochs are kept (continue with: edgekd compress --resume {_run_dir(ctx)})"


def _resume_hint(ctx) -> str:
    if _run_dir(ctx) is None:
        return "; free some space and try again"
    return f"; free some space, then continue with: edgekd compress --resume {_run_dir(ctx)}"


def _fail(exc: BaseException, code: int, debug: bool, prefix: str = "", hint: str = ""):
    if debug:
        traceback.print_exc()
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" while writing '{exc.filename}'" if exc.filename else ""
        message = f"disk full{where}: {exc.strerror or 'No space left on device'}"
    elif isinstance(exc, OSError) and not prefix:
        message = f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": ")
    elif not isinstance(exc, EdgekdError):
        message = f"{type(exc).__name__}: {message}"
    click.echo(f"edgekd: error: {prefix}{message}{hint}", err=True)
    sys.exit(code)


@click.group(cls=EdgekdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekd")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (or set EDGEKD_DEBUG=1).")
@click.pass_context
def main(ctx, debug):
    """edgekd: turn a trained image model into a small, fast int8 ONNX model, and measure it.

    \b
    compress  teacher -> distill -> int8 -> ONNX -> bench -> report, from one recipe
    export    one model (a run's stage, or weights + architecture) to ONNX, fp32 or int8
    bench     latency and accuracy of ONNX models on an ONNX Runtime provider

    Exit codes: 0 ok, 1 internal error or a file system error such as a full disk,
    2 bad input, 3 a validation or accuracy gate failed, 4 training diverged,
    130/143 interrupted (SIGINT/SIGTERM).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    signal.signal(signal.SIGTERM, _on_sigterm)


# --------------------------------------------------------------------------------------
# compress


@main.command()
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
    from .recipe import Recipe

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
        run_dir = _new_run_dir(resolved.name, out_dir, force)
    ctx = click.get_current_context()
    ctx.obj["run_dir"] = str(run_dir)  # for the resume hint after Ctrl-C, SIGTERM or a full disk

    from .pipeline import compress as run_compress

    report = run_compress(resolved, run_dir, resume=resume_dir is not None, progress=not quiet,
                          log=lambda line: click.echo(line, err=True))
    if report is None:  # every stage was already done
        report = json.loads((run_dir / "report.json").read_text())
    from .report import summary_table

    click.echo(summary_table(report))
    click.echo(f"\nReport: {run_dir / 'report.md'}  Models: {run_dir / 'model.int8.onnx'}")


def _new_run_dir(name: str, out_dir: str | None, force: bool) -> Path:
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


# --------------------------------------------------------------------------------------
# export


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--onnx", "to_onnx", is_flag=True, required=True, help="Export to ONNX (the only format so far).")
@click.option("--stage", type=click.Choice(["student", "teacher"]), default="student", show_default=True,
              help="Which model of RUN_DIR to export.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="A weights file (.safetensors, or a .pt/.pth state_dict) to export instead of a run's stage.")
@click.option("--arch", help="Architecture of --weights: a zoo name (resnet8, resnet20, resnet56, mobilenetv2, "
                             "tinycnn), torchvision:NAME, or package.module:function.")
@click.option("--arch-args", default="{}", metavar="YAML", help="Keyword arguments of --arch, e.g. '{width: 24}'.")
@click.option("--data", "data_name", default="fashion-mnist-subset", show_default=True, metavar="NAME|PATH",
              help="Dataset of --weights (gives input shape, classes, normalization and calibration images).")
@click.option("--data-path", metavar="DIR", help="Where to look for the dataset's files.")
@click.option("--int8", is_flag=True, help="Quantize to int8 (QDQ, per-channel, calibrated on training images).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Output file. Default: RUN_DIR/export/STAGE.{fp32,int8}.onnx, or beside --weights.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def export(run_dir, to_onnx, stage, weights, arch, arch_args, data_name, data_path, int8, output, opset, force, quiet):
    """Export one model to ONNX, validated against PyTorch at two batch sizes.

    \b
    edgekd export --onnx runs/default                 # the run's student, fp32
    edgekd export --onnx runs/default --int8          # ... quantized to int8
    edgekd export --onnx --weights w.safetensors --arch resnet20 -o resnet20.onnx
    """
    from .pipeline import export_one

    if (run_dir is None) == (weights is None):
        raise ConfigError("give either RUN_DIR or --weights FILE (with --arch)")
    if weights is not None and not arch:
        raise ConfigError("--weights needs --arch NAME (the architecture the weights belong to)")
    result = export_one(
        run_dir=run_dir, stage=stage, weights=weights, arch=arch, arch_args=parse_yaml_mapping(arch_args, "--arch-args", "a mapping such as '{width: 24}'"),
        data_name=data_name, data_path=data_path, int8=int8, output=output, opset=opset, force=force,
        progress=not quiet,
    )
    for batch, diff in result["max_abs_diff"].items():
        click.echo(f"batch {batch}: max |onnx - torch| = {diff:.3e}")
    if "int8_top1_agreement" in result:
        click.echo(f"int8 vs PyTorch argmax agreement on {result['agreement_samples']} val images: "
                   f"{result['int8_top1_agreement']:.2f}%")
    click.echo(f"wrote {result['path']}")


# --------------------------------------------------------------------------------------
# bench


def _int_list(ctx, param, value):
    """'1,8' -> [1, 8]; a click callback for the comma-list options of bench."""
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected integers separated by commas, got {value!r}") from None
    if not numbers:
        raise click.BadParameter("give at least one number")
    return numbers


def _write_output(path, text: str) -> None:
    from .artifacts import atomic_write_text

    atomic_write_text(Path(path), text)


def _load_bench_json(path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"'{path}' does not exist; pass two files written by edgekd bench --json-out") from None
    except ValueError as exc:
        raise ConfigError(f"'{path}' is not JSON ({exc}); pass files written by edgekd bench --json-out") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise ConfigError(f"'{path}' has no 'models' list; pass an edgekd bench or report JSON file")
    return report


@main.command()
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--data", "eval_set", type=click.Path(dir_okay=False),
              help="Eval set (.npz with uint8 x in NCHW and labels y), e.g. a run's eval.npz. "
                   "Without it: latency on synthetic input, no accuracy.")
@click.option("--provider", default="cpu", show_default=True,
              help="ONNX Runtime execution provider: cpu, cuda, tensorrt, openvino, ... (missing ones are an error).")
@click.option("--batch-size", "-b", default="1", show_default=True, callback=_int_list,
              help="Batch size for latency; a comma list (1,8) benches each.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--warmup-seconds", type=float, default=0.0, show_default=True,
              help="Warm up for at least this long too (both --warmup runs and this time).")
@click.option("--runs", type=int, default=200, show_default=True, help="Minimum number of timed runs.")
@click.option("--min-seconds", type=float, default=1.0, show_default=True, help="Minimum total timed duration.")
@click.option("--threads", default="0", show_default=True, callback=_int_list,
              help="Intra-op threads (0: ONNX Runtime default); a comma list (1,2) benches each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema edgekd.bench/1) instead of a table.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the JSON report to this file.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Also write one CSV line per result.")
@click.option("--markdown", "--md", "md_out", type=click.Path(dir_okay=False), help="Also write a Markdown table.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Also write a Pareto plot (top-1 vs p50, PNG; needs matplotlib and --data).")
@click.option("--list-providers", is_flag=True, help="List the execution providers of this onnxruntime and exit.")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), metavar="A.json B.json",
              help="Compare two JSON reports (ratios B/A) instead of benching.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--inter-threads", type=int, default=0, show_default=True,
              help="Inter-op threads; > 0 runs the graph in ONNX Runtime's parallel execution mode.")
@click.option("--intra-spinning", type=click.Choice(["on", "off"]), default=None,
              help="session.intra_op.allow_spinning (default: ONNX Runtime's, on).")
@click.option("--inter-spinning", type=click.Choice(["on", "off"]), default=None,
              help="session.inter_op.allow_spinning (default: ONNX Runtime's, on).")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="Reference model (e.g. the fp32 one): argmax agreement and max abs difference of the "
                   "outputs, on --data or synthetic input. A run directory compares int8 with fp32 by itself.")
@click.option("--interleave", is_flag=True,
              help="Time all models side by side in short rotating rounds instead of one after another: "
                   "fair ratios on a machine whose speed changes while it runs (a shared VM, a throttling device).")
def bench(models, eval_set, provider, batch_size, warmup, runs, min_seconds, threads, as_json, json_out,
          csv_out, md_out, plot, list_providers, compare, quiet, warmup_seconds, inter_threads, intra_spinning,
          inter_spinning, reference, interleave):
    """Latency (p50/p90/p99 after warm-up, throughput), peak memory and top-1 of ONNX MODELS.

    MODELS are .onnx files or one run directory (then every model in it is benched on
    its eval.npz). Needs only onnxruntime and numpy: run it on the target device.
    A '*' after p50 marks a low-confidence result (too few runs, or noisy timings).
    """
    from . import bench as bench_mod
    from . import benchfmt
    from .recipe import BenchConfig

    if list_providers:
        entries = bench_mod.provider_list()
        if as_json:
            click.echo(json.dumps({"onnxruntime": bench_mod.ort.__version__, "providers": entries}, indent=2))
            return
        click.echo(f"onnxruntime {bench_mod.ort.__version__}")
        for e in entries:
            if e["available"]:
                click.echo(f"  available  {e['short'] or '-':<9} {e['ort_name']}")
        for e in entries:
            if not e["available"]:
                click.echo(f"  missing    {e['short']:<9} {e['ort_name']}: {e['hint']}")
        return
    if compare:
        a, b = (_load_bench_json(p) for p in compare)
        rows = benchfmt.compare(a, b)
        if as_json:
            click.echo(json.dumps({"a": compare[0], "b": compare[1], "models": rows}, indent=2))
        else:
            click.echo(benchfmt.format_compare(rows, compare[0], compare[1]))
        return
    if not models:
        raise click.UsageError("give .onnx MODELS or a run directory (or --list-providers, --compare A B)")

    spin = {"on": True, "off": False, None: None}
    cfg = BenchConfig(provider=provider, batch_size=batch_size[0], warmup=warmup, runs=runs,
                      min_seconds=min_seconds, threads=threads[0], warmup_seconds=warmup_seconds,
                      inter_threads=inter_threads, intra_spinning=spin[intra_spinning],
                      inter_spinning=spin[inter_spinning], interleave=interleave)
    sweep = {"batch_sizes": batch_size, "threads": threads}
    dirs = [m for m in models if Path(m).is_dir()]
    if dirs:
        if len(models) != 1:
            raise ConfigError("give either one run directory or .onnx files, not both")
        rows = bench_mod.bench_run_dir(Path(dirs[0]), cfg, progress=not quiet, eval_set=eval_set,
                                       reference=reference, **sweep)
    else:
        rows = bench_mod.bench(list(models), eval_set=eval_set, cfg=cfg, progress=not quiet,
                               reference=reference, **sweep)
    report = bench_mod.to_json(rows, {"sweep": sweep}, cfg=cfg)
    if json_out:
        _write_output(json_out, json.dumps(report, indent=2) + "\n")
    if csv_out:
        _write_output(csv_out, benchfmt.to_csv(report["models"]))
    if md_out:
        _write_output(md_out, benchfmt.to_markdown(report["models"], report["machine"], report["config"]))
    if plot:
        from .report import pareto_plot_models

        if pareto_plot_models(report["models"], plot, title="edgekd bench") is None:
            click.echo("edgekd: no plot: it needs matplotlib and results with top-1 (--data)", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(benchfmt.format_table(rows))


if __name__ == "__main__":  # pragma: no cover
    main()
