"""One source of defaults: the recipe's dataclasses. The README's recipe reference, the
click options of compress / export / bench and the keyword defaults of edgekd.api must say
what the dataclasses say."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
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

README = Path(__file__).resolve().parents[1] / "README.md"
NO_VALUE = ("null", "unset", "none", "auto")  # what the README may say of a None default


def _defaults(config) -> dict:
    """{field: default} of a dataclass (default_factory fields built)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _recipe_table() -> dict[str, str]:
    """{section: keys cell} of the README's `| section | keys (defaults) |` table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| section | keys (defaults) |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        section, keys = line.strip("|").split("|", 1)
        rows[section.strip().strip("`")] = keys.strip().rstrip("|").strip()
    return rows


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis that closes the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise AssertionError(f"README recipe table: unbalanced parenthesis in {text[start:start + 60]!r}")


def _documented(cell: str) -> tuple[list[str], dict[str, str]]:
    """The keys a row names outside parentheses, and {key: the text of its parenthesis}
    for those written `key` (default ...)."""
    keys, notes, i = [], {}, 0
    while i < len(cell):
        if cell[i] == "(":  # a note: its backticked words are not keys of this section
            i = _closing(cell, i) + 1
            continue
        match = re.match(r"`([a-z_]+)`( \()?", cell[i:])
        if match is None:
            i += 1
            continue
        key = match.group(1)
        keys.append(key)
        i += match.end()
        if match.group(2):
            end = _closing(cell, i - 1)
            notes[key] = cell[i:end]
            i = end + 1
    return keys, notes


def _leading_value(note: str):
    """The value a note starts with: '200', 'false: ...', '[1, 7]', '0 = ...', 'auto: ...'."""
    note = note.strip()
    if note[:1] in "[{":
        closing = note.index("]" if note[0] == "[" else "}")
        token = note[:closing + 1]
        import yaml

        return yaml.safe_load(token), token
    token = re.split(r"[\s;:,]", note, maxsplit=1)[0]
    scalars = {"true": True, "false": False, "null": None}
    if token in scalars:
        return scalars[token], token
    for kind in (int, float):
        try:
            return kind(token), token
        except ValueError:
            pass
    return token, token


def _mismatch(name: str, default, note: str) -> str | None:
    """How a README note on `name` disagrees with its dataclass default, or None."""
    value, token = _leading_value(note)
    if default is None:
        # a None default: the README says null / unset / auto or describes it; a value would be wrong
        if token.lower() not in NO_VALUE and isinstance(value, (bool, int, float, list, dict)):
            return f"README says {name} defaults to {token}; the dataclass says None"
        return None
    if dataclasses.is_dataclass(default):
        return None  # a nested section (quantize.qat): its keys are checked inside the note
    if isinstance(value, str) and not isinstance(default, str):
        return None  # a description ("layer names", "kept in float"), not a value
    same = value is default if isinstance(default, bool) or isinstance(value, bool) else value == default
    return None if same else f"README says {name} defaults to {token}; the dataclass says {default!r}"


def _mismatches(section: str, defaults: dict, cell: str) -> list[str]:
    keys, notes = _documented(cell)
    problems = [f"README recipe table: {section}.{key} is not a field of the {section} section"
                for key in keys if key not in defaults]
    for key, note in notes.items():
        if key not in defaults:
            continue
        problems.append(_mismatch(f"{section}.{key}", defaults[key], note))
        # keys inside the note, written `key` value: of the nested section (`qat` (`epochs` 2, ...))
        # or of this one (`response` (hinton; dkd, `dkd_beta` 8.0))
        nested = _defaults(defaults[key]) if dataclasses.is_dataclass(defaults[key]) else None
        scope, prefix = (nested, f"{section}.{key}.") if nested is not None else (defaults, f"{section}.")
        for inner in re.finditer(r"`([a-z_]+)` (?=[\w.\[{-])", note):
            if inner.group(1) in scope and inner.group(1) != key:
                problems.append(_mismatch(prefix + inner.group(1), scope[inner.group(1)], note[inner.end():]))
    return [p for p in problems if p]


def _missing(section: str, defaults: dict, cell: str) -> list[str]:
    """The fields of a section that its row never names (as `key`, anywhere in the cell)."""
    return [f"{section}.{key}" for key in defaults if f"`{key}`" not in cell]


def _recipe_sections() -> dict:
    return {f.name: f.default_factory for f in dataclasses.fields(Recipe)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)}


def test_readme_recipe_table_matches_the_dataclasses():
    rows = _recipe_table()
    sections = _recipe_sections()
    assert set(sections) <= set(rows), f"README recipe table lacks the sections {sorted(set(sections) - set(rows))}"
    top = {k: v for k, v in _defaults(Recipe).items() if k not in sections}
    problems = _mismatches("top", top, rows["top"])
    for section, config in sections.items():
        problems += _mismatches(section, _defaults(config), rows[section])
    assert not problems, "\n".join(problems)


def test_readme_recipe_table_names_every_field():
    rows = _recipe_table()
    sections = _recipe_sections()
    missing = _missing("top", {k: v for k, v in _defaults(Recipe).items() if k not in sections}, rows["top"])
    for section, config in sections.items():
        missing += _missing(section, _defaults(config), rows.get(section, ""))
    assert not missing, f"README recipe table lacks the fields {', '.join(missing)}"


def test_the_table_check_catches_a_missing_field():
    assert _missing("export", _defaults(ExportConfig), "`opset` (17), `atol` (1e-4)") == [
        f"export.{name}" for name in _defaults(ExportConfig) if name not in ("opset", "atol")]


def test_the_table_check_catches_a_wrong_default():
    problems = _mismatches("bench", _defaults(BenchConfig),
                           "`runs` (100), `warmup` (10), `nope` (1), `provider` (cpu; `min_seconds` 2.5)")
    assert problems == ["README recipe table: bench.nope is not a field of the bench section",
                        "README says bench.runs defaults to 100; the dataclass says 200",
                        "README says bench.min_seconds defaults to 2.5; the dataclass says 1.0"]


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
    assert given["data_name"] == DataConfig.name
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
