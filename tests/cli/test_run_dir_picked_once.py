"""A compress picks and checks its new run directory once (edgekd.api.new_run, which the CLI
calls before the chain so that its resume hint knows the directory), and under torchrun the
rank questions come from edgekd.train.distributed alone."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekd
from edgekd.cli import main
from edgekd.errors import DataError
from edgekd.pipeline import rundir
from edgekd.train import distributed


@pytest.fixture
def picks(monkeypatch):
    """The calls of rundir.new_run_dir (the real one runs), under whatever name a module of
    edgekd imported it."""
    import sys

    import edgekd.cli.compress  # noqa: F401 - loaded, so that its name is replaced too

    calls = []
    real = rundir.new_run_dir

    def counted(*args):
        calls.append(args)
        return real(*args)

    for name, module in list(sys.modules.items()):
        if name.startswith("edgekd") and getattr(module, "new_run_dir", None) is real:
            monkeypatch.setattr(module, "new_run_dir", counted)
    return calls


@pytest.fixture
def broken_data(tmp_path):
    """A data file that preflight refuses: the run stops after its directory was picked."""
    path = tmp_path / "broken.npz"
    path.write_text("not an npz archive")
    return path


def test_cli_compress_picks_its_run_dir_once(tmp_path, picks, broken_data):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", "--out", str(out), "--data", str(broken_data)])
    assert result.exit_code == 2, result.output
    assert "is not an .npz archive" in result.output
    assert picks == [("default", str(out), False)]
    assert not out.exists()  # preflight refused before anything was written


def test_api_compress_picks_its_run_dir_once(tmp_path, picks, broken_data):
    with pytest.raises(DataError, match="is not an .npz archive"):
        edgekd.compress({"data": {"name": str(broken_data)}}, tmp_path / "run")
    assert picks == [("default", tmp_path / "run", False)]


def test_rank_questions(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (1, 2, False)
    assert distributed.rank_copy(Path("run")) == Path("run/state/rank1")
