"""`edgekd list [REGISTRY]`: every registry of edgekd with what it holds, one section each;
one registry by name; a user's plugin's entries; the torch-free install lists all but the
registries that need the train extra, and says so."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.cli.list import CATALOG

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ["datasets", "architectures", "terms", "schemes", "responses", "importances", "calibrations", "providers"]
# the train extra's modules blocked as if not installed (sys.modules[name] = None makes `import name` fail)
WITHOUT_TRAIN = ("import sys\nfor m in ('torch', 'torchvision', 'yaml', 'safetensors', 'torch_pruning', "
                 "'matplotlib'): sys.modules[m] = None\n")


def invoke(*args):
    return CliRunner().invoke(main, ["list", *args])


def sections(text: str) -> dict:
    """{section: (header, [entry names])} of the text listing."""
    out, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            current = line.split(":")[0]
            out[current] = (line, [])
        elif line.startswith("  ") and not line.startswith("  (") and current is not None:
            out[current][1].append(line.split()[0])
    return out


def test_it_lists_every_registry_with_its_entries():
    result = invoke()
    assert result.exit_code == 0, result.output
    listed = sections(result.output)
    assert list(listed) == SECTIONS
    for name, (header, entries) in listed.items():
        registry = CATALOG.get(name).load()
        assert entries == list(registry.names()), name
        assert header == f"{name}: {CATALOG.get(name).recipe_key} ({CATALOG.get(name).path})"
    assert listed["schemes"][1] == ["offline", "online", "born-again", "ema"]
    assert listed["responses"][1] == ["hinton", "dkd"]
    lines = result.output.splitlines()
    assert any(re.fullmatch(r"  cpu +CPUExecutionProvider", line) for line in lines)
    assert any(re.fullmatch(r"  l1 +L1 norm of each channel's weights", line) for line in lines)
    # a docstring's first sentence, not cut at "et al. 2018"
    assert any(re.fullmatch(r"  online +Deep mutual learning \(Zhang et al. 2018\): `peers` students learn "
                            r"together, no teacher", line) for line in lines)


def test_one_registry_by_name_and_an_unknown_name():
    result = invoke("schemes")
    assert result.exit_code == 0, result.output
    assert list(sections(result.output)) == ["schemes"]
    result = invoke("nope")
    assert result.exit_code == 2
    assert result.output == ("edgekd: error: unknown registry 'nope'; available: " + ", ".join(SECTIONS) + "\n")


def test_json_holds_every_registry_and_description():
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert list(listing) == SECTIONS
    assert listing["providers"]["entries"]["cpu"] == "CPUExecutionProvider"
    assert listing["responses"]["kind"] == "response loss"
    assert listing["schemes"]["registry"] == "edgekd.distill.scheme_registry.SCHEMES"
    assert listing["schemes"]["recipe_key"] == "distill.scheme"
    assert listing["calibrations"]["entries"]["minmax"] == "each tensor's min and max"
    assert list(json.loads(invoke("terms", "--json").output)) == ["terms"]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "toy_list_plugin.py").write_text(
        "from edgekd.distill.scheme_registry import SCHEMES, Scheme\n\n\n"
        "@SCHEMES.register('toy-listed')\n"
        "class Listed(Scheme):\n"
        "    '''A scheme from a plugin. More text that is not shown.'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy_list_plugin"
    from edgekd.distill.scheme_registry import SCHEMES

    SCHEMES.unregister("toy-listed")
    sys.modules.pop("toy_list_plugin", None)


def test_a_plugins_entries_are_listed(plugin):
    result = invoke("schemes", "--plugin", plugin)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "  toy-listed  A scheme from a plugin"
    result = invoke("--plugin", "no_such_plugin_module_edgekd")
    assert result.exit_code == 2
    assert result.output.startswith("edgekd: error: plugin module 'no_such_plugin_module_edgekd' (in --plugin) "
                                    "cannot be imported")


def run_without_train(*args):
    code = WITHOUT_TRAIN + (f"from edgekd.cli import main\ntry:\n    main({['list', *args]!r})\nfinally:\n"
                            "    print('torch loaded' if sys.modules.get('torch') else 'no torch', file=sys.stderr)\n")
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def test_without_the_train_extra_it_lists_what_needs_no_torch():
    result = run_without_train()
    assert result.returncode == 0, result.stderr
    assert result.stderr == "no torch\n"
    listed = sections(result.stdout)
    assert list(listed) == SECTIONS
    assert listed["architectures"][1] == ["needs"]  # the line that says what to install, no entries
    assert "  needs the training dependencies: pip install 'edgekd[train]'" in result.stdout.splitlines()
    for name in SECTIONS:
        if name != "architectures":
            assert listed[name][1] == list(CATALOG.get(name).load().names()), name
    one = run_without_train("architectures")
    assert one.returncode == 2 and one.stdout == ""
    message, loaded = one.stderr.splitlines()
    assert message.startswith("edgekd: error: edgekd list architectures needs the training dependencies")
    assert message.endswith("pip install 'edgekd[train]' (in a clone: pip install '.[train]')")
    assert loaded == "no torch"


def test_the_catalog_names_every_registry_and_architecture_md_every_one():
    """A Registry added anywhere in edgekd is listed, and has its row in ARCHITECTURE.md."""
    defined = set()
    for path in (REPO / "edgekd").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for name in re.findall(r"^([A-Z_]+)(?:: [^=\n]+)? = Registry\(", path.read_text(), re.M):
            defined.add(f"{module}.{name}")
    catalog = {CATALOG.get(name).path for name in CATALOG}
    # FORMATS and ARCHITECTURES are defined in a registry module and read where they are filled
    # (edgekd.data.formats, edgekd.models.zoo): the catalog names the module that fills them
    filled_in = {"edgekd.data.formats.registry.FORMATS": "edgekd.data.formats.FORMATS",
                 "edgekd.models.registry.ARCHITECTURES": "edgekd.models.zoo.ARCHITECTURES"}
    defined = {filled_in.get(p, p) for p in defined}
    assert defined - {"edgekd.cli.list.CATALOG"} == catalog
    architecture = (REPO / "ARCHITECTURE.md").read_text()
    for path in catalog:
        assert f"| `{path}` |" in architecture, path
