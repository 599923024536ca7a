"""The `edgekd` command: compress, export, bench, list.

Flags become recipe fields; errors become one line on stderr and a distinct exit code
(see errors.py), with the traceback only under --debug. Heavy modules (torch, the
pipeline) are imported inside the commands that need them, so `edgekd bench` runs on a
device that has only onnxruntime, numpy and click.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import traceback

import click

from edgekd.configtools import clip
from edgekd.errors import EdgekdError, first_line
from edgekd.version import __version__

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

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # edgekd's own options and the command's name: a bad one is a usage error
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx):
        debug = bool(os.environ.get("EDGEKD_DEBUG"))
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a command's options and arguments (click parses them here)
            _usage_error(exc)
        except EdgekdError as exc:
            if exc.exit_code == 0:  # a planned stop (distill.search.export_only): what to do next, no error
                click.echo(f"edgekd: {exc}", err=True)
                sys.exit(0)
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


def _usage_error(exc: click.UsageError):
    """click's usage errors (missing or unknown option, bad value, no such command) as every
    other bad input: one `edgekd: error:` line naming the help to read, exit 2. `edgekd`
    alone still shows the help."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        raise exc
    where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
    message = " ".join(exc.format_message().split())  # one line
    click.echo(f"edgekd: error: {clip(message, 1000)}{where}", err=True)
    sys.exit(exc.exit_code if exc.exit_code else 2)


def _debug(ctx) -> bool:
    return bool(ctx.obj and ctx.obj.get("debug"))


def _run_dir(ctx) -> str | None:
    """The run directory of `edgekd compress` once its run has started, i.e. has written its
    progress file (None before that, and for export and bench: there is nothing to resume)."""
    run_dir = ctx.obj.get("run_dir") if ctx.obj else None
    if run_dir is None or not os.path.isfile(os.path.join(run_dir, "state", "progress.json")):
        return None
    return run_dir


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
    # one line, bounded (a crafted input must not flood the terminal), long enough for two paths
    message = first_line(exc) if not isinstance(exc, EdgekdError) else clip(str(exc), 1000)
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
    list      what each registry holds (dataset formats, architectures, schemes, ...)

    Exit codes: 0 ok, 1 internal error or a file system error such as a full disk,
    2 bad input, 3 a validation or accuracy gate failed, 4 training diverged,
    130/143 interrupted (SIGINT/SIGTERM).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    signal.signal(signal.SIGTERM, _on_sigterm)



def setup_logging(verbose: bool, quiet: bool) -> None:
    """The library logs to the 'edgekd' logger and never prints; the command shows its records
    on stderr: info by default, debug with -v, only warnings and errors with -q."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logger = logging.getLogger("edgekd")
    logger.setLevel(level)
    if not any(isinstance(h, EchoHandler) for h in logger.handlers):
        logger.addHandler(EchoHandler())
        logger.propagate = False


class EchoHandler(logging.Handler):
    """Log records as plain lines on the stderr of the moment (click.echo), so that a
    command run in-process (click's test runner, a notebook) shows them where it reads."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)


def verbosity_options(command):
    """-v/--verbose, -q/--quiet and --no-progress, the same on every command; the command
    gets `quiet` (no progress bars) and `verbose`, and logging is set up before it runs."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, verbose: bool, quiet: bool, no_progress: bool, **kwargs):
        setup_logging(verbose, quiet)
        return command(*args, verbose=verbose, quiet=quiet or no_progress, **kwargs)

    wrapper = click.option("--no-progress", is_flag=True, help="No progress bars (messages stay).")(wrapper)
    wrapper = click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors; no progress bars.")(wrapper)
    return click.option("--verbose", "-v", is_flag=True, help="Also debug messages.")(wrapper)
