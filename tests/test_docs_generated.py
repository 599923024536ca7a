"""The generated docs pages (edgekd/docs_gen.py) are current, and the pages name only files
that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from edgekd import docs_gen

ROOT = Path(__file__).resolve().parents[1]


def test_generated_pages_are_current():
    """In a fresh interpreter: a format or provider that another test registered in this one
    would show in the flags' help texts."""
    check = subprocess.run([sys.executable, "-m", "edgekd.docs_gen", "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, f"{check.stderr.strip()}\nregenerate the pages with " \
                                  f"`{docs_gen.REGENERATE}` and commit the result"


def test_the_check_catches_a_stale_page(tmp_path):
    for name, render in docs_gen.PAGES.items():
        (tmp_path / name).write_text(render(), encoding="utf-8")
    assert docs_gen.stale(tmp_path) == []
    page = tmp_path / "recipe-reference.md"
    page.write_text(page.read_text(encoding="utf-8").replace("| `200` |", "| `100` |", 1), encoding="utf-8")
    (tmp_path / "cli-reference.md").unlink()
    assert docs_gen.stale(tmp_path) == ["recipe-reference.md", "cli-reference.md"]


def test_the_recipe_reference_carries_the_field_comments():
    """A field's comment above it, on its line, and from a base class (TrainConfig.augment)."""
    page = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert "| `alpha` | `float` | `0.9` | weight of the KD (response) term; CE on labels gets 1 - alpha |" in page
    assert "| `response` | `str` | `hinton` | the response term, a name in edgekd.distill.responses.RESPONSES" in page
    assert "random crop (pad 2) + horizontal flip, done on whole batches" in page
    assert "### `distill.search`" in page and "### `quantize.qat`" in page and "### `teacher.transfer`" in page


def test_the_cli_reference_has_every_command_and_flag():
    from edgekd.cli import main

    page = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    for name, command in main.commands.items():
        assert f"## `edgekd {name}`" in page
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("-"):
                    assert f"`{flag}`" in page, f"edgekd {name} {flag} is not in docs/cli-reference.md"


def test_docs_name_only_repository_files_that_exist():
    """Pages refer to benchmark results, scripts and recipes by path (mkdocs --strict checks
    the links between pages; these are outside docs/)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # ARCHITECTURE.md: paths inside edgekd/
    missing = []
    for page in pages:
        for path in re.findall(r"`((?:benchmarks|models|edgekd|tests)/[\w./-]+?\.(?:md|py|yaml|json))`",
                               page.read_text(encoding="utf-8")):
            if "NAME" not in path and not (ROOT / path).exists():  # NAME: a placeholder
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "docs name files that do not exist:\n" + "\n".join(missing)
