"""`edgekd bench`: flags -> edgekd.api.bench; table, JSON, CSV, Markdown and plot outputs;
--list-providers and --compare. Imports no torch: it runs on the device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekd.cli.group import verbosity_options
from edgekd.errors import ConfigError
from edgekd.runtime.providers import PROVIDERS


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
    from edgekd.io.artifacts import atomic_write_text

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


@click.command()
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--data", "eval_set", metavar="NAME|PATH",
              help="Data to measure accuracy on: an eval set (.npz with uint8 x in NCHW and labels y, e.g. a "
                   "run's eval.npz) or a registered dataset's name (its test split). Without it: latency on "
                   "synthetic input, no accuracy.")
@click.option("--provider", default="cpu", show_default=True,
              help=f"ONNX Runtime execution provider: a registered short name ({', '.join(PROVIDERS.names())}) or "
                   "a full name; --list-providers shows which are installed; a missing one is an error.")
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
@verbosity_options
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
          csv_out, md_out, plot, list_providers, compare, quiet, verbose, warmup_seconds, inter_threads, intra_spinning,
          inter_spinning, reference, interleave):
    """Latency (p50/p90/p99 after warm-up, throughput), peak memory and top-1 of ONNX MODELS.

    MODELS are .onnx files or one run directory (then every model in it is benched on
    its eval.npz). Needs only onnxruntime and numpy: run it on the target device.
    A '*' after p50 marks a low-confidence result (too few runs, or noisy timings).
    """
    import onnxruntime as ort

    from edgekd.runtime import fmt as benchfmt
    from edgekd.runtime.providers import provider_list

    if list_providers:
        entries = provider_list()
        if as_json:
            click.echo(json.dumps({"onnxruntime": ort.__version__, "providers": entries}, indent=2))
            return
        click.echo(f"onnxruntime {ort.__version__}")
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
    dirs = [m for m in models if Path(m).is_dir()]
    if dirs and len(models) != 1:
        raise ConfigError("give either one run directory or .onnx files, not both")
    from edgekd.api import bench as run_bench

    report = run_bench(list(models), data=eval_set, batch_sizes=batch_size, threads=threads, reference=reference,
                       progress=not quiet, provider=provider, warmup=warmup, runs=runs, min_seconds=min_seconds,
                       warmup_seconds=warmup_seconds, inter_threads=inter_threads,
                       intra_spinning=spin[intra_spinning], inter_spinning=spin[inter_spinning],
                       interleave=interleave)
    if json_out:
        _write_output(json_out, json.dumps(report, indent=2) + "\n")
    if csv_out:
        _write_output(csv_out, benchfmt.to_csv(report["models"]))
    if md_out:
        _write_output(md_out, benchfmt.to_markdown(report["models"], report["machine"], report["config"]))
    if plot:
        from edgekd.pipeline.report import pareto_plot_models

        if pareto_plot_models(report["models"], plot, title="edgekd bench") is None:
            click.echo("edgekd: no plot: it needs matplotlib and results with top-1 (--data)", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(benchfmt.format_table(report["models"]))
