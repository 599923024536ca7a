"""Writing over what is not ours: run directories (issue 17, class 1).

A run directory is used by its real path and must be new or empty (with --force: an
earlier edgekd run); a directory another run holds is refused, naming the holder; nothing
inside a run is followed through a link; resume removes edgekd's temp files anywhere in
the run, and checks the run's recipe record (state/progress.json) against its hash. Every
refusal is exit 2 with one line, and leaves every file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clitools import TINY_RECIPE, cli, refused
from edgekd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict:
    """Every path under `folder` (links not followed) -> (bytes, link target or None, mtime_ns)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        link = os.readlink(path) if path.is_symlink() else None
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        entries[str(path.relative_to(folder))] = (data, link, st.st_mtime_ns)
    return entries


def tiny_data(path: Path) -> Path:
    """120 train and 30 test 1x8x8 images of 3 classes that differ in brightness."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n)
        return (rng.integers(0, 60, (n, 1, 8, 8)) + y[:, None, None, None] * 60).astype(np.uint8), y.astype(np.int64)

    (tx, ty), (sx, sy) = make(120), make(30)
    np.savez(path, train_x=tx, train_y=ty, test_x=sx, test_y=sy)
    return path


def tiny_recipe(folder: Path) -> Path:
    data = tiny_data(folder / "tiny.npz")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(data=data))
    return recipe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return tiny_recipe(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory) -> Path:
    """One complete tiny run; tests work on copies."""
    out = tmp_path_factory.mktemp("finished") / "run"
    before = snapshot(inputs.parent)
    result = cli("compress", inputs, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert snapshot(inputs.parent) == before  # nothing written beside the inputs
    assert not (out / "state/run.lock").exists()  # the lock is released at the end
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


# -- where a new run may go ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a\nb"])
def test_run_names_that_leave_runs_are_refused(inputs, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(cli("compress", inputs, "--name", name, "--no-progress"), "name")
    assert snapshot(tmp_path) == before
    from edgekd.pipeline.rundir import new_run_dir

    with pytest.raises(ConfigError, match="cannot be a folder name under runs/"):
        new_run_dir(name, None, False)  # the run-directory check itself, whatever the recipe checks


def test_out_through_a_link_resolves_to_the_real_folder(inputs, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not an edgekd run\n")
    (tmp_path / "link").symlink_to(mine)
    before = snapshot(tmp_path)
    refused(cli("compress", inputs, "--out", tmp_path / "link", "--no-progress"), str(mine), "already exists")
    # --force replaces an earlier run's artifacts, never a folder edgekd did not make
    refused(cli("compress", inputs, "--out", tmp_path / "link", "--force", "--no-progress"), "not an edgekd run")
    assert snapshot(tmp_path) == before


def test_out_that_is_a_file_or_under_one_is_refused(inputs, tmp_path):
    (tmp_path / "file.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(cli("compress", inputs, "--out", tmp_path / "file.txt", "--no-progress"), "is not a directory")
    refused(cli("compress", inputs, "--out", tmp_path / "file.txt" / "run", "--no-progress"), "is not a folder")
    assert snapshot(tmp_path) == before


def test_default_run_dir_skips_dangling_links_and_resolves_a_linked_runs(tmp_path, monkeypatch):
    from edgekd.pipeline.rundir import check_new_run_dir, new_run_dir

    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "default").mkdir(parents=True)
    (elsewhere / "default" / "report.json").write_text("{}")
    (tmp_path / "runs").symlink_to(elsewhere)
    (elsewhere / "default-2").symlink_to(tmp_path / "nowhere")  # dangling: taken all the same
    path = new_run_dir("default", None, False)
    assert path == Path("runs/default-3")
    assert check_new_run_dir(path, False) == elsewhere / "default-3"
    assert not (tmp_path / "nowhere").exists()


def test_force_refuses_inputs_inside_the_run_it_replaces(run, inputs):
    before = snapshot(run)
    refused(cli("compress", inputs, "--set", f"data.name={run / 'eval.npz'}", "--out", run, "--force",
                "--no-progress"), "data.name", "inside the run directory")
    assert snapshot(run) == before


def test_a_run_filled_by_another_run_meanwhile_is_refused(inputs, tmp_path, monkeypatch):
    """Two runs on one new --out: the second finds the first's files once it holds the lock."""
    from edgekd.pipeline.preflight import preflight

    out = tmp_path / "run"

    def preflight_then_other_run_starts(*args, **kwargs):
        preflight(*args, **kwargs)
        out.mkdir()
        (out / "recipe.yaml").write_text("the other run's\n")

    monkeypatch.setattr("edgekd.pipeline.chain.preflight", preflight_then_other_run_starts)
    refused(cli("compress", inputs, "--out", out, "--no-progress"), "filled by another run")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]  # no state/ or lock left behind
    assert (out / "recipe.yaml").read_text() == "the other run's\n"


# -- links inside a run are never followed -------------------------------------------------------


@pytest.mark.parametrize("where", ["artifact", "state-folder", "in-state", "fifo"])
def test_resume_refuses_links_inside_the_run(run, tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.onnx").write_bytes(b"someone else's file")
    (outside / ".progress.json.abc.tmp").write_bytes(b"looks like a temp file of ours")
    if where == "artifact":
        (run / "model.int8.onnx").unlink()
        (run / "model.int8.onnx").symlink_to(outside / "victim.onnx")
    elif where == "state-folder":
        shutil.copytree(run / "state", outside / "state")
        shutil.rmtree(run / "state")
        (run / "state").symlink_to(outside / "state")
        (outside / "state" / ".bench.json.x.tmp").write_bytes(b"")
    elif where == "in-state":
        (run / "state" / "bench.json").unlink()
        (run / "state" / "bench.json").symlink_to(outside / "victim.onnx")
    else:
        os.mkfifo(run / "eval.npz.fifo")
    before_run, before_outside = snapshot(run), snapshot(outside)
    line = refused(cli("compress", "--resume", run, "--no-progress"), str(run))
    assert ("not a regular file" if where == "fifo" else "contains a link") in line
    refused(cli("compress", "--resume", run, "--set", "bench.runs=3", "--no-progress"))
    assert snapshot(run) == before_run and snapshot(outside) == before_outside


def test_force_refuses_a_run_with_a_link(run, inputs, tmp_path):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"someone else's weights")
    (run / "teacher.safetensors").unlink()
    (run / "teacher.safetensors").symlink_to(victim)
    before = snapshot(run)
    refused(cli("compress", inputs, "--out", run, "--force", "--no-progress"), "contains a link", "teacher.safetensors")
    assert snapshot(run) == before and victim.read_bytes() == b"someone else's weights"


# -- the run's recipe record (resume is honest) ----------------------------------------------


def test_a_tampered_recipe_record_is_refused(run):
    progress = run / "state/progress.json"
    state = json.loads(progress.read_text())
    state["recipe"]["seed"] = 7  # to match an edited recipe.yaml, without the hash
    progress.write_text(json.dumps(state))
    before = snapshot(run)
    refused(cli("compress", "--resume", run, "--no-progress"), str(progress), "does not match its hash")
    assert snapshot(run) == before


def test_a_field_added_to_edgekd_since_the_run_started_is_no_change():
    """A run recorded by an older edgekd lacks newer fields: their defaults are not changes."""
    from edgekd.pipeline.resume import changed_keys, check_changes, fingerprint

    old = {"seed": 0, "export": {"opset": 17}}
    defaults = {"seed": 0, "export": {"opset": 17, "rtol": 1e-3}}
    assert changed_keys(old, {"seed": 0, "export": {"opset": 17, "rtol": 1e-3}}, defaults=defaults) == {}
    assert changed_keys(old, {"seed": 0, "export": {"opset": 17, "rtol": 0.1}}, defaults=defaults) == {
        "export.rtol": (None, 0.1)}
    state = {"done": {"data": {}, "teacher": {}}, "recipe": old, "recipe_sha256": fingerprint(old)}
    with pytest.raises(ConfigError, match=r"in seed \(data\), read by completed stages"):
        check_changes(state, {"seed": 1, "export": {"opset": 17}}, "run", defaults=defaults)
    allowed = check_changes(state, {"seed": 0, "export": {"opset": 17, "rtol": 0.1}}, "run", defaults=defaults)
    assert allowed == {"export.rtol": {"from": None, "to": 0.1, "stage": "export"}}


# -- temp files ------------------------------------------------------------------------------


def test_resume_removes_temp_files_anywhere_in_the_run(run):
    """A SIGKILL between write and rename leaves '.NAME.XXXX.tmp' files; resume removes them
    in every folder of the run, and touches nothing else of a finished run."""
    leftovers = [run / ".model.int8.onnx.k2j3.tmp", run / "state" / ".progress.json.9x.tmp",
                 run / "extra" / ".report.json.1.tmp"]
    (run / "extra").mkdir()
    for path in leftovers:
        path.write_bytes(b"")
    def files():  # folders' mtimes change with the lock file; files must not
        return {k: v for k, v in snapshot(run).items() if v[0] is not None}

    keep = {k: v for k, v in files().items() if not k.endswith(".tmp")}
    result = cli("compress", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in leftovers)
    assert files() == keep  # every stage was done: nothing rewritten, no lock file left


# -- the lock -----------------------------------------------------------------------------------


HOLD = """\
import sys, time
from pathlib import Path
from edgekd.pipeline.rundir import run_lock
with run_lock(Path(sys.argv[1]), sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_run_in_use_is_refused_naming_the_holder(run, inputs):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        refused(cli("compress", "--resume", run, "--no-progress"), "in use by another edgekd run", f"pid {holder.pid}")
        refused(cli("compress", inputs, "--out", run, "--force", "--no-progress"), f"pid {holder.pid}")
        assert snapshot(run) == before
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    assert (run / "state/run.lock").is_file()  # stale, and not locked any more
    time.sleep(0.05)
    result = cli("compress", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not (run / "state/run.lock").exists()


@pytest.mark.parametrize("error", [ConfigError("refused"), KeyboardInterrupt(), SystemExit(3)])
def test_the_lock_is_released_on_every_way_out(tmp_path, error):
    from edgekd.pipeline.rundir import locked_by, run_lock

    real = tmp_path / "a" / "b" / "new"
    with pytest.raises(type(error)), run_lock(real, real):
        assert locked_by(real) is not None and "pid" in locked_by(real)
        with pytest.raises(ConfigError, match="in use by another edgekd run"), run_lock(real, real):
            pass
        raise error
    assert locked_by(real) is None
    assert not (tmp_path / "a").exists()  # created for the run (parents too), still empty: removed again
    (tmp_path / "kept").mkdir()
    with run_lock(tmp_path / "kept", "kept"):
        (tmp_path / "kept" / "recipe.yaml").write_text("x")
    assert sorted(p.name for p in (tmp_path / "kept").rglob("*")) == ["recipe.yaml"]  # the run's files stay
