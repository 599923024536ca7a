"""The provider-control flags of `edgekd bench` (--provider-option, --session-config,
--graph-optimization, --accuracy-tolerance), collected into one `provider_control`
argument of edgekd.api.bench keywords, each checked before anything is benched (one line,
exit 2); and the --list-providers listing. Imports no torch."""

from __future__ import annotations

import functools

import click

from edgekd.runtime.config import BenchConfig
from edgekd.runtime.ranking import DEFAULT_TOLERANCE, check_tolerance
from edgekd.runtime.session_options import (
    GRAPH_OPTIMIZATION,
    check_graph_optimization,
    check_option_map,
    parse_pairs,
)


def provider_control_options(fn):
    """A decorator: the flags on a click command, whose function then gets
    `provider_control` (a dict of edgekd.api.bench keywords) instead."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        options = parse_pairs(kwargs.pop("provider_option"), "--provider-option")
        config = parse_pairs(kwargs.pop("session_config"), "--session-config")
        check_option_map(options, "--provider-option", provider_prefix=True)
        check_option_map(config, "--session-config")
        check_graph_optimization(kwargs["graph_optimization"], "--graph-optimization")
        kwargs["provider_control"] = {
            "provider_options": options, "session_config": config,
            "graph_optimization": kwargs.pop("graph_optimization"),
            "accuracy_tolerance": check_tolerance(kwargs.pop("accuracy_tolerance")),
        }
        return fn(*args, **kwargs)

    for option in reversed((
        click.option("--provider-option", "provider_option", multiple=True, metavar="[PROVIDER:]KEY=VALUE",
                     help="A provider option (repeatable), for every provider benched or, prefixed, for one "
                          "(openvino:device_type=CPU). device_type picks a plugin provider's device."),
        click.option("--session-config", "session_config", multiple=True, metavar="KEY=VALUE",
                     help="An ONNX Runtime session config entry (repeatable), e.g. "
                          "session.disable_prepacking=1."),
        click.option("--graph-optimization", default=BenchConfig.graph_optimization, show_default=True,
                     metavar="|".join(GRAPH_OPTIMIZATION),
                     help="ONNX Runtime's graph optimization level."),
        click.option("--accuracy-tolerance", default=str(DEFAULT_TOLERANCE), show_default=True, metavar="POINTS",
                     help="With several providers: name the fastest whose top-1 is at most this many points "
                          "below the CPU provider's (or the first one's)."),
    )):
        command = option(command)
    return command


def echo_provider_list(entries: list, runtime_version: str) -> None:
    """--list-providers as text: available providers (built-in ones, then plugins with their
    devices), then missing ones with how to get them; the package that brings each."""
    click.echo(f"onnxruntime {runtime_version}")
    for e in entries:
        if e["available"]:
            devices = f" on {', '.join(e['devices'])}" if e.get("devices") else ""
            click.echo(f"  available  {e['short'] or '-':<9} {e['ort_name']}  [{e['kind']}: {e['package']}{devices}]")
    for e in entries:
        if not e["available"] and e.get("package"):  # an installed plugin without a device here
            click.echo(f"  no device  {e['short']:<9} {e['ort_name']}  [{e['kind']}: {e['package']}]: {e['hint']}")
    for e in entries:
        if not e["available"] and not e.get("package"):
            click.echo(f"  missing    {e['short']:<9} {e['ort_name']}: {e['hint']}")
