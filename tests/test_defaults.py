"""One source of defaults: the recipe's dataclasses. The docs' recipe reference, the
click options of compress / export / bench and the keyword defaults of edgekd.api must say
what the dataclasses say."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest

from edgekd import api
from edgekd.cli.bench import bench as bench_command
from edgekd.cli.compress import compress as compress_command
from edgekd.cli.export import export as export_command
from edgekd.data.config import DataConfig
from edgekd.onnx_export import ExportConfig
from edgekd.recipe import Recipe
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.ranking import DEFAULT_TOLERANCE

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md"
BELOW = "the section below"  # the default cell of a nested section (distill.search, quantize.qat)


def _defaults(config) -> dict:
    """{field: default} of a dataclass (default_factory fields built)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _reference_tables(text: str) -> dict[str, dict[str, str]]:
    """{section: {key: default cell}} of the recipe reference's tables; the top level is 'top',
    nested sections are dotted ('distill.search')."""
    tables, section = {}, None
    for line in text.splitlines():
        heading = re.match(r"#{2,} (?:`([a-z_.]+)`|Top level)\s*$", line)
        if heading:
            section = heading.group(1) or "top"
            tables[section] = {}
            continue
        row = re.match(r"\| `([a-z0-9_]+)` \| `[^`]*` \| ([^|]*) \|", line)
        if row and section is not None:
            tables[section][row.group(1)] = row.group(2).strip()
    return tables


def _cell_value(cell: str):
    import yaml

    return yaml.safe_load(cell.strip("`")) if cell.startswith("`") else cell


def _mismatches(section: str, defaults: dict, rows: dict[str, str]) -> list[str]:
    """How the reference's rows of one section disagree with its dataclass defaults."""
    problems = [f"recipe reference: {section}.{key} is not a field of the {section} section"
                for key in rows if key not in defaults]
    problems += [f"recipe reference lacks {section}.{key}" for key in defaults if key not in rows]
    for key, cell in rows.items():
        if key not in defaults:
            continue
        default = defaults[key]
        if dataclasses.is_dataclass(default):
            same = cell == BELOW
        else:
            value = _cell_value(cell)
            same = value is default if isinstance(default, bool) or isinstance(value, bool) else value == default
            same = same and type(value) is type(default) or (isinstance(default, float) and value == default)
        if not same:
            problems.append(f"recipe reference says {section}.{key} defaults to {cell}; the dataclass says {default!r}")
    return problems


def _sections(config, prefix: str = "") -> dict:
    """{dotted section: its dataclass} for every nested section of config, at any depth."""
    out = {}
    for name, hint in typing.get_type_hints(config).items():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate):
                out[prefix + name] = candidate
                out.update(_sections(candidate, f"{prefix}{name}."))
    return out


def _all_mismatches(text: str) -> list[str]:
    tables = _reference_tables(text)
    sections = _sections(Recipe)
    problems = [f"recipe reference lacks the section {name}" for name in sections if name not in tables]
    top = {k: v for k, v in _defaults(Recipe).items() if k not in sections}
    problems += _mismatches("top", top, tables.get("top", {}))
    for name, config in sections.items():
        if name in tables:
            problems += _mismatches(name, {k: v for k, v in _defaults(config).items() if not k.startswith("_")},
                                    tables[name])
    return problems


def test_recipe_reference_matches_the_dataclasses():
    """docs/recipe-reference.md is generated (python -m edgekd.docs_gen); this reads it back
    and holds every default against the dataclasses, whatever wrote the page."""
    problems = _all_mismatches(REFERENCE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems) + "\n(regenerate: python -m edgekd.docs_gen)"


def test_the_reference_check_catches_a_wrong_or_missing_default():
    text = REFERENCE.read_text(encoding="utf-8")
    wrong = text.replace("| `runs` | `int` | `200` |", "| `runs` | `int` | `100` |", 1)
    assert wrong != text
    assert "recipe reference says bench.runs defaults to `100`; the dataclass says 200" in _all_mismatches(wrong)
    missing = re.sub(r"\| `opset` \|[^\n]*\n", "", text, count=1)
    assert "recipe reference lacks export.opset" in _all_mismatches(missing)
    extra = text.replace("| `runs` |", "| `nope` | `int` | `1` | |\n| `runs` |", 1)
    assert "recipe reference: bench.nope is not a field of the bench section" in _all_mismatches(extra)


def _option_defaults(command, args=()) -> dict:
    """The values click gives the command's parameters when no flag is given (after callbacks)."""
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


def test_bench_flags_default_to_the_bench_section():
    given = _option_defaults(bench_command)
    fields = _defaults(BenchConfig)
    compared = 0
    repeatable = {p.name for p in bench_command.params if getattr(p, "multiple", False)}
    for name, value in given.items():
        if name in repeatable:  # --provider-option, --session-config: none given, an empty map
            assert value == () and fields.get(name, {}) == {}
        elif name in fields:
            value = value[0] if name in ("batch_size", "threads") else value  # comma-list sweeps: one value
            assert value == fields[name], f"edgekd bench --{name.replace('_', '-')} defaults to {value!r}; " \
                                          f"BenchConfig.{name} is {fields[name]!r}"
            compared += 1
    assert compared >= 8  # provider, batch_size, warmup, warmup_seconds, runs, min_seconds, threads, inter_threads...
    assert given["graph_optimization"] == BenchConfig.graph_optimization
    assert float(given["accuracy_tolerance"]) == DEFAULT_TOLERANCE


def test_export_flags_default_to_the_recipe():
    given = _option_defaults(export_command, ["--onnx"])
    # no --data: the weights' own shape decides (DataConfig.name where it fits), so no copy of it here
    assert given["data_name"] is None
    assert given["opset"] == ExportConfig.opset


def test_compress_flags_leave_the_defaults_to_the_recipe():
    given = _option_defaults(compress_command)
    for name in ("data_name", "data_path", "seed", "name", "device", "precision"):
        assert given[name] is None, f"edgekd compress --{name}: a default here would override the recipe's"
    assert given["deterministic"] is False and given["baseline"] is False


@pytest.mark.parametrize("function, keywords", [(api.export, ("data", "opset")),
                                                (api.bench, ("batch_sizes", "threads"))])
def test_api_keywords_hold_no_copy_of_a_recipe_default(function, keywords):
    """A keyword that mirrors a recipe field defaults to None: the dataclass decides (edgekd.api
    imports no config module, so that `import edgekd` stays light)."""
    parameters = inspect.signature(function).parameters
    for name in keywords:
        assert parameters[name].default is None, f"edgekd.{function.__name__}({name}={parameters[name].default!r}): " \
                                                 "a copy of the recipe's default"
    if function is api.bench:
        assert parameters["accuracy_tolerance"].default == DEFAULT_TOLERANCE


def test_no_copy_of_the_default_opset_or_dataset_in_the_package():
    """opset and the default dataset: keyword defaults refer to ExportConfig / DataConfig; the
    dataset's name is written only where it is the default and where the format registers it."""
    package = Path(api.__file__).resolve().parent
    owners = {package / "data" / "config.py", package / "data" / "formats" / "npz.py"}
    copies = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.arguments):
                named = [*node.posonlyargs, *node.args][-len(node.defaults):] if node.defaults else []
                pairs = [*zip(named, node.defaults), *zip(node.kwonlyargs, node.kw_defaults)]
                copies += [f"{path.relative_to(package.parent)}:{default.lineno}: {arg.arg}={default.value!r}"
                           for arg, default in pairs
                           if arg.arg == "opset" and isinstance(default, ast.Constant) and default.value is not None]
            elif isinstance(node, ast.Call) and any(isinstance(a, ast.Constant) and a.value == "--opset"
                                                    for a in node.args):  # click.option("--opset", default=...)
                copies += [f"{where}: --opset default={k.value.value!r}" for k in node.keywords
                           if k.arg == "default" and isinstance(k.value, ast.Constant)]
            elif isinstance(node, ast.Constant) and node.value == DataConfig.name and path not in owners:
                copies.append(f"{where}: {node.value!r}")
    assert not copies, "copies of a recipe default (refer to ExportConfig.opset / DataConfig.name):\n" + \
        "\n".join(copies)
