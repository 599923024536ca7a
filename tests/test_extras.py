"""The `train` extra: compress and export without it fail in one line (exit 2) that says
what to install, before a recipe is read or a run directory made; bench does not need it.
The real torch-free install is tests/e2e/test_device_install.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgekd.errors import MissingDependency
from edgekd.extras import TRAIN_MODULES, missing, require_train

# torch (and yaml) blocked as if not installed: sys.modules[name] = None makes `import name` fail
WITHOUT = "import sys\nfor m in ('torch', 'yaml'): sys.modules[m] = None\n"


def test_train_modules_are_found_here_and_blocked_ones_are_missing(monkeypatch):
    assert missing(TRAIN_MODULES) == []
    require_train("edgekd compress")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependency) as info:
        require_train("edgekd compress")
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert "and torch is not installed" in message
    assert "pip install 'edgekd[train]'" in message
    assert missing({"no_such_module_edgekd": "nope"}) == ["nope"]


@pytest.mark.parametrize("args", [["compress"], ["compress", "--name", "x"], ["export", "--onnx", "runs/x"]])
def test_cli_without_torch_fails_in_one_line(tmp_path, args):
    code = WITHOUT + f"from edgekd.cli import main\nmain({args!r})\n"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("edgekd: error: edgekd ") and result.stderr.count("\n") == 1, result.stderr
    assert "torch, PyYAML are not installed: pip install 'edgekd[train]'" in result.stderr
    assert not any(tmp_path.iterdir())  # no run directory, nothing written


def test_api_without_torch_raises_and_bench_help_still_works(tmp_path):
    code = WITHOUT + (
        "import edgekd\n"
        "from edgekd.errors import MissingDependency\n"
        "for call in (lambda: edgekd.compress(), lambda: edgekd.export('runs/x')):\n"
        "    try:\n"
        "        call()\n"
        "    except MissingDependency as exc:\n"
        "        assert 'edgekd[train]' in str(exc)\n"
        "    else:\n"
        "        raise AssertionError('no MissingDependency')\n"
        "from edgekd.cli import main\n"
        "main(['bench', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr
    assert not any(tmp_path.iterdir())
