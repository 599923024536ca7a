"""Fixtures of the data tests; the image helpers they share live in tests/imagefiles.py
(imported by name: a module called conftest would be ambiguous between test folders)."""

from pathlib import Path

import pytest

from imagefiles import write_folder


@pytest.fixture
def image_folder(tmp_path):
    """Factory: write_folder under tmp_path/name."""
    def make(name: str = "folder", **kw) -> Path:
        return write_folder(tmp_path / name, **kw)

    return make
