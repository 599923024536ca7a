"""Docs that run: every bash/sh/shell and python block of README.md and docs/*.md runs as
written, in a fresh folder holding a small run directory `runs/default` (what the
Quickstart's `edgekd compress` leaves), with the repository's virtual environment first on
PATH. A block that trains gets a small dataset and one epoch per stage appended: each
`edgekd compress` line (not `--resume`) gets SMALL, and `edgekd.compress` in a python block
gets the same keys under a dict or default recipe.

A block that cannot run here is marked on the line before it with `<!-- docs-test: skip
(the reason) -->`: the reason is required and shown as the skip reason (pytest -ra). `<!-- test: NAME -->` marks a block that another test runs; a file under tests/
must hold that marker. Every ```yaml block is read as a recipe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
SKIP = re.compile(r"<!-- docs-test: skip \((?P<reason>.*)\) -->\s*$")
MARKER = re.compile(r"<!-- (?:docs-)?test[:\s].*-->\s*$")
ELSEWHERE = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\s*$")
# 1,000 training images, one epoch per stage, a short bench; no accuracy budget (too few val images for one)
SMALL_KEYS = {"teacher.epochs": 1, "distill.epochs": 1, "data.limit_train": 1000, "data.limit_test": 200,
              "data.calib_size": 64, "quantize.max_drop": None, "bench.runs": 20, "bench.min_seconds": 0,
              "bench.warmup": 2}
SMALL = " ".join(f"--set {key}={json.dumps(value)}" for key, value in SMALL_KEYS.items())
BLOCK_TIMEOUT = 180  # seconds: a tiny compress takes about 15 s on 2 busy cores


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None  # the HTML comment on the line before the fence, if any

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"```(\w+)\s*$", lines[i])
        if fence and fence.group(1) in LANGUAGES:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = lines[i - 1] if i and MARKER.match(lines[i - 1]) else None
            blocks.append(Block(page, i + 1, LANGUAGES[fence.group(1)], "\n".join(lines[i + 1:end]) + "\n", before))
            i = end
        i += 1
    return blocks


BLOCKS = [block for page in PAGES for block in _blocks(page)]


def _small_shell(code: str) -> str:
    """Each `edgekd compress` command (not --resume) with SMALL appended (before its comment)."""
    joined = re.sub(r"\\\n\s*", " ", code)  # continuation lines: one command per line
    out = []
    for line in joined.splitlines():
        if re.match(r"\s*edgekd compress\b", line) and "--resume" not in line:
            line = re.sub(r"\s+#\s.*$", "", line) + " " + SMALL
        out.append(line)
    return "\n".join(out) + "\n"


PYTHON_PRELUDE = f'''\
import edgekd as _edgekd

_SMALL = {{}}
for _key, _value in {SMALL_KEYS!r}.items():
    _section, _field = _key.split(".")
    _SMALL.setdefault(_section, {{}})[_field] = _value
_compress = _edgekd.compress


def _small_compress(recipe=None, *args, **kwargs):
    """edgekd.compress with the docs test's small data and epochs over a dict or default recipe."""
    if recipe is None or isinstance(recipe, dict):
        recipe = {{**(recipe or {{}})}}
        for _section, _fields in _SMALL.items():
            recipe[_section] = {{**recipe.get(_section, {{}}), **_fields}}
    return _compress(recipe, *args, **kwargs)


_edgekd.compress = _small_compress
# ---- the block, as written ----
'''


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A run directory as the Quickstart leaves it, small: made once, copied for every block."""
    folder = tmp_path_factory.mktemp("docs-run")
    _run(["bash", "-c", f"edgekd compress --out runs/default --no-progress {SMALL}"], folder, "the small run")
    return folder / "runs" / "default"


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("EDGEKD_DEBUG", None)
    return env


def _run(command: list[str], cwd: Path, where: str) -> None:
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert result.returncode == 0, f"{where} failed (exit {result.returncode}):\n" \
                                   f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def test_every_marker_says_why():
    """A docs-test marker is a skip with a reason; an unknown marker is a typo that would run nothing."""
    bad = [f"{b.where}: {b.marker}" for b in BLOCKS
           if b.marker and not (SKIP.match(b.marker) and SKIP.match(b.marker)["reason"].strip())
           and not ELSEWHERE.match(b.marker)]
    assert not bad, "markers must be `<!-- docs-test: skip (the reason) -->` or `<!-- test: NAME -->`:\n" + \
        "\n".join(bad)


def test_every_yaml_block_is_a_valid_recipe():
    """The recipes the pages show are read as `edgekd compress` reads them (keys, types, ranges)."""
    import yaml

    from edgekd.recipe import Recipe

    checked = 0
    for page in PAGES:
        for found in re.finditer(r"^```yaml\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M):
            where = f"{page.relative_to(ROOT)}:{page.read_text(encoding='utf-8')[:found.start()].count(chr(10)) + 1}"
            Recipe.from_dict(yaml.safe_load(found.group(1)), where)  # a ConfigError names the page and line
            checked += 1
    assert checked >= 4


def test_there_are_blocks_to_run():
    assert len([b for b in BLOCKS if b.marker is None]) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_docs_block_runs(block: Block, small_run: Path, tmp_path: Path):
    if block.marker and SKIP.match(block.marker):
        pytest.skip(f"{block.where}: {SKIP.match(block.marker)['reason']}")
    if block.marker and ELSEWHERE.match(block.marker):
        name = ELSEWHERE.match(block.marker)["name"]
        holders = [p for p in sorted((ROOT / "tests").rglob("*.py"))
                   if p != Path(__file__).resolve() and f"test: {name}" in p.read_text(encoding="utf-8")]
        assert holders, f"{block.where} is marked `test: {name}`, but no file under tests/ holds that marker"
        pytest.skip(f"{block.where}: run by {', '.join(str(p.relative_to(ROOT)) for p in holders)}")
    shutil.copytree(small_run, tmp_path / "runs" / "default", symlinks=True)
    if block.language == "shell":
        script = tmp_path / "block.sh"
        script.write_text(_small_shell(block.code), encoding="utf-8")
        _run(["bash", "-euo", "pipefail", str(script)], tmp_path, block.where)
    else:
        script = tmp_path / "block.py"
        script.write_text(PYTHON_PRELUDE + block.code, encoding="utf-8")
        _run([sys.executable, str(script)], tmp_path, block.where)
