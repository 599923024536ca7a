"""`edgekd bench`: flags -> edgekd.api.bench; table, JSON, CSV, Markdown and plot outputs;
--list-providers and --compare. Imports no torch: it runs on the device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekd.cli.group import verbosity_options
from edgekd.cli.preprocess_options import preprocess_options
from edgekd.cli.provider_options import echo_provider_list, provider_control_options
from edgekd.errors import ConfigError, EdgekdError, first_line
from edgekd.runtime.config import BenchConfig  # the flags' defaults: the recipe's bench section
from edgekd.runtime.providers import PROVIDERS


def _flag(param) -> str:
    return max(param.opts, key=len) if param is not None and param.opts else "the value"


def _int_list(ctx, param, value):
    """'1,8' -> [1, 8]; a click callback for the comma-list options of bench (a ConfigError,
    one line and exit 2, for anything else)."""
    try:
        numbers = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{_flag(param)}: expected integers separated by commas, got {str(value)[:40]!r}") from None
    if not numbers:
        raise ConfigError(f"{_flag(param)}: give at least one number")
    if len(numbers) > MAX_SWEEP:
        raise ConfigError(f"{_flag(param)}: at most {MAX_SWEEP} values, got {len(numbers)}")
    return numbers


MAX_SWEEP = 64  # values of a comma-list option (--batch-size, --threads)


def _protocol_value(ctx, param, value):
    """--warmup / --runs (whole numbers) and --warmup-seconds / --min-seconds (finite seconds),
    in the ranges of edgekd.runtime.measure.check_protocol: else a ConfigError (exit 2)."""
    from edgekd.runtime.measure import check_protocol

    seconds = param.name.endswith("seconds")
    try:
        number = float(value) if seconds else int(value)
    except (TypeError, ValueError):
        kind = "a number of seconds" if seconds else "a whole number"
        raise ConfigError(f"{_flag(param)} must be {kind}, got {str(value)[:40]!r}") from None
    check_protocol(**{param.name: number})
    return number


def _write_output(path, text: str) -> None:
    from edgekd.io.artifacts import atomic_write_text

    atomic_write_text(Path(path), text)


MAX_COMPARE_BYTES = 256 * 1024**2  # a bench or report JSON file of --compare


def _load_bench_json(path) -> dict:
    """A --compare file, checked for what the comparison reads (fmt.check_compare_report):
    anything else is a ConfigError (exit 2, one line)."""
    from edgekd.runtime.bench_output import check_compare_report

    hint = "pass two files written by edgekd bench --json-out"
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"'{path}' does not exist; {hint}")
    if not path.is_file():  # a folder, or a FIFO that would block the reader
        raise ConfigError(f"'{path}' is not a regular file; {hint}")
    if path.stat().st_size > MAX_COMPARE_BYTES:
        raise ConfigError(f"'{path}' is larger than {MAX_COMPARE_BYTES // 1024**2} MiB, not a bench report; {hint}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"'{path}' cannot be read ({exc.strerror or type(exc).__name__}); {hint}") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"'{path}' is not JSON ({first_line(exc)[:80]}); {hint}") from None
    check_compare_report(report, str(path))
    return report


def _check_outputs(flags: dict, models, eval_set, reference, force: bool) -> None:
    """The output files of a bench: never an input, never replaced without --force (exit 2)."""
    from edgekd.io.outputs import check_outputs, input_files

    if any(flags.values()):
        check_outputs(flags, input_files(models, eval_set, reference), force=force,  # an image folder: guarded as a run directory
                      run_dirs=[m for m in [*models, eval_set or ""] if m and Path(m).is_dir()])


@click.command()
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--data", "eval_set", metavar="NAME|PATH",
              help="Data to measure accuracy on: an eval set (.npz with uint8 x in NCHW, labels y and class_names, "
                   "e.g. a run's eval.npz), a registered dataset's name (its test split) or an image folder (one "
                   "subfolder per class, named as the model's classes; without edgekd.class_names in the model, "
                   "classes in sorted order). A class the model does not know is refused. Without it: latency on "
                   "synthetic input, no accuracy.")
@click.option("--fit-data", is_flag=True,
              help="Convert (grey <-> RGB) and resize eval arrays (.npz, a dataset) whose channels or size differ "
                   "from the model's input, per its preprocessing, and note it in the result. Without it they are "
                   "refused (image folders are always decoded at the model's size).")
@click.option("--skip-bad", is_flag=True,
              help="With --data FOLDER: skip image files that cannot be decoded (unreadable, truncated), counted and "
                   "the first ones named, instead of refusing the folder.")
@click.option("--provider", default=BenchConfig.provider, show_default=True,
              help=f"ONNX Runtime execution provider: a registered short name ({', '.join(PROVIDERS.names())}), "
                   "a full name or an installed plugin (onnxruntime-ep-ID); a comma list (cpu,openvino) or 'all' "
                   "benches each model on each, side by side; --list-providers shows which are installed.")
@click.option("--batch-size", "-b", default=str(BenchConfig.batch_size), show_default=True, callback=_int_list,
              help="Batch size for latency; a comma list (1,8) benches each.")
@click.option("--warmup", default=str(BenchConfig.warmup), show_default=True, callback=_protocol_value, metavar="N",
              help="Untimed runs before timing (at most 1000000).")
@click.option("--warmup-seconds", default=f"{BenchConfig.warmup_seconds:g}", show_default=True,
              callback=_protocol_value, metavar="SECONDS",
              help="Warm up for at least this long too (both --warmup runs and this time; at most 3600).")
@click.option("--runs", default=str(BenchConfig.runs), show_default=True, callback=_protocol_value, metavar="N",
              help="Minimum number of timed runs (at most 1000000).")
@click.option("--min-seconds", default=f"{BenchConfig.min_seconds:g}", show_default=True,
              callback=_protocol_value, metavar="SECONDS",
              help="Minimum total timed duration (at most 3600; timing stops at 1000000 runs or 3600 s).")
@click.option("--threads", default=str(BenchConfig.threads), show_default=True, callback=_int_list,
              help="Intra-op threads (0: ONNX Runtime default); a comma list (1,2) benches each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema edgekd.bench/1) instead of a table.")
@click.option("--json-out", type=click.Path(), help="Also write the JSON report to this file.")
@click.option("--csv", "csv_out", type=click.Path(), help="Also write one CSV line per result.")
@click.option("--markdown", "--md", "md_out", type=click.Path(), help="Also write a Markdown table.")
@click.option("--plot", type=click.Path(),
              help="Also write a Pareto plot (top-1 vs p50, PNG; needs matplotlib and --data).")
@click.option("--force", is_flag=True,
              help="Replace output files that exist (never one of the inputs: models, --data, --reference, "
                   "a run directory's files).")
@click.option("--list-providers", is_flag=True, help="List the execution providers of this onnxruntime and exit.")
@click.option("--compare", nargs=2, type=click.Path(), metavar="A.json B.json",
              help="Compare two JSON reports (ratios B/A) instead of benching; exit 1 when they have no result "
                   "in common (same model name, batch size and threads).")
@verbosity_options
@click.option("--inter-threads", type=int, default=BenchConfig.inter_threads, show_default=True,
              help="Inter-op threads; > 0 runs the graph in ONNX Runtime's parallel execution mode.")
@click.option("--intra-spinning", type=click.Choice(["on", "off"]), default=None,
              help="session.intra_op.allow_spinning (default: ONNX Runtime's, on).")
@click.option("--inter-spinning", type=click.Choice(["on", "off"]), default=None,
              help="session.inter_op.allow_spinning (default: ONNX Runtime's, on).")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="Reference model (e.g. the fp32 one): argmax agreement and max abs difference of the "
                   "outputs, on --data or synthetic input. A run directory compares int8 with fp32 by itself.")
@click.option("--latency-table", type=click.Path(dir_okay=False), metavar="TABLE.json",
              help="MODELS is one candidates folder that compress wrote (distill.search.export_only): time its "
                   "int8 candidates side by side with its reference and their own fp32 models, and write "
                   "their latency table (read by distill.search.latency_table) to this file.")
@click.option("--interleave/--no-interleave", default=None,
              help="Time all models side by side in short rotating rounds instead of one after another: "
                   "fair ratios on a machine whose speed changes while it runs (a shared VM, a throttling device). "
                   "Default: on whenever several models or providers are compared.")
@provider_control_options  # --provider-option, --session-config, ...: one `provider_control` argument
@preprocess_options()  # --preprocess, --mean, --std, ...: one `preprocess` argument
def bench(models, eval_set, fit_data, skip_bad, provider, batch_size, warmup, runs, min_seconds, threads, as_json, json_out,
          csv_out, md_out, plot, force, list_providers, compare, quiet, verbose, warmup_seconds, inter_threads,
          intra_spinning, inter_spinning, reference, interleave, preprocess, provider_control, latency_table=None):
    """Latency (p50/p90/p99 after warm-up, throughput), peak memory and top-1 of ONNX MODELS.

    MODELS are .onnx files or one run directory (then every model in it is benched on
    its eval.npz). Needs only onnxruntime and numpy: run it on the target device.
    A '*' after p50 marks a low-confidence result (too few runs, or noisy timings).
    """
    import onnxruntime as ort

    from edgekd.runtime import bench_output as benchfmt
    from edgekd.runtime.providers import provider_list

    if list_providers:
        entries = provider_list()
        if as_json:
            click.echo(json.dumps({"onnxruntime": ort.__version__, "providers": entries}, indent=2))
            return
        echo_provider_list(entries, ort.__version__)
        return
    if compare:
        a, b = (_load_bench_json(p) for p in compare)
        rows = benchfmt.compare(a, b)
        if not rows:  # a gate: a comparison of nothing has failed (exit 1), it has not passed
            raise EdgekdError(benchfmt.format_compare(rows, compare[0], compare[1]) + "; compare reports of the "
                              "same models and settings")
        if as_json:
            click.echo(json.dumps({"a": compare[0], "b": compare[1], "models": rows}, indent=2))
        else:
            click.echo(benchfmt.format_compare(rows, compare[0], compare[1]))
        return
    if latency_table:
        _bench_candidates(models, latency_table, provider, batch_size, threads, force, quiet)
        return
    if not models:
        raise click.UsageError("give .onnx MODELS or a run directory (or --list-providers, --compare A B)")

    spin = {"on": True, "off": False, None: None}
    dirs = [m for m in models if Path(m).is_dir()]
    if dirs and len(models) != 1:
        raise ConfigError("give either one run directory or .onnx files, not both")
    outputs = {"--json-out": json_out, "--csv": csv_out, "--md": md_out, "--plot": plot}
    _check_outputs(outputs, models, eval_set, reference, force)  # before any benchmarking
    from edgekd.api import bench as run_bench

    report = run_bench(list(models), data=eval_set, batch_sizes=batch_size, threads=threads, reference=reference,
                       progress=not quiet, provider=provider, warmup=warmup, runs=runs, min_seconds=min_seconds,
                       warmup_seconds=warmup_seconds, inter_threads=inter_threads,
                       intra_spinning=spin[intra_spinning], inter_spinning=spin[inter_spinning],
                       interleave=interleave, preprocess=preprocess, fit_data=fit_data, skip_bad=skip_bad,
                       **provider_control)
    # checked again just before each write: a file may have appeared while benching
    if json_out:
        _check_outputs({"--json-out": json_out}, models, eval_set, reference, force)
        _write_output(json_out, json.dumps(report, indent=2) + "\n")
    if csv_out:
        _check_outputs({"--csv": csv_out}, models, eval_set, reference, force)
        _write_output(csv_out, benchfmt.to_csv(report["models"] + report["failed"]))
    if md_out:
        _check_outputs({"--md": md_out}, models, eval_set, reference, force)
        _write_output(md_out, benchfmt.to_markdown(report["models"] + report["failed"], report["machine"],
                                                   report["config"], report.get("provider_ranking")))
    if plot:
        from edgekd.pipeline.plots import pareto_plot_models

        _check_outputs({"--plot": plot}, models, eval_set, reference, force)
        if pareto_plot_models(report["models"], plot, title="edgekd bench") is None:
            click.echo("edgekd: no plot: it needs matplotlib and results with top-1 (--data)", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(benchfmt.format_table(report["models"] + report["failed"], report.get("provider_ranking"),
                                         report.get("providers_skipped")))


def _bench_candidates(models, table, provider, batch_size, threads, force, quiet) -> None:
    """--latency-table: a search's candidates folder timed into a latency table (edgekd.search.timing)."""
    from edgekd.search.space import count_in_words
    from edgekd.search.timing import bench_candidates

    if len(models) != 1 or not Path(models[0]).is_dir() or len(batch_size) != 1 or len(threads) != 1:
        raise ConfigError("--latency-table times one candidates folder at one --batch-size and one --threads: give "
                          "the folder that compress wrote with distill.search.export_only: true")
    _check_outputs({"--latency-table": table}, models, None, None, force)
    timed = bench_candidates(models[0], table, provider=provider, threads=threads[0], batch=batch_size[0],
                             log=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    click.echo(f"latency table of {count_in_words(timed['candidates'])} written to {table}")
