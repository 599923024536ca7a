"""Training you can watch: a compress run whose output goes to a file (no terminal) logs one
line per epoch per training stage and no progress-bar `\\r`; each training run keeps
RUN/metrics/<name>.csv (one row per epoch, appended on --resume without duplicates) and,
with tensorboard installed, event files in RUN/tb/<name>/; the Python API shows the same
lines in a plain script, where nobody configured logging."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clitools import TINY_RECIPE, cli

REPO = Path(__file__).resolve().parents[2]
EPOCH_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(?P<stage>[\w.-]+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+)  "
                        r"loss \d+\.\d{4}  val top-1 \d+\.\d\d%  lr \S+  \d+ img/s  ETA \d+:\d\d:\d\d$")
TWO_EPOCHS = [("teacher", 1), ("teacher", 2), ("distill", 1), ("distill", 2)]


def tiny_recipe(folder: Path, epochs: int, **data) -> Path:
    text = TINY_RECIPE.format(data="fashion-mnist-subset").replace("epochs: 1", f"epochs: {epochs}")
    extra = "".join(f", {key}: {value}" for key, value in data.items())
    path = folder / "tiny.yaml"
    path.write_text(text.replace("calib_size: 16", "calib_size: 16" + extra))
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def run_logged(args: list, log: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`args` in a real process whose stdout and stderr go to `log`, as under nohup or CI."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600)


def epoch_lines(text: str) -> list[tuple[str, int]]:
    found = [EPOCH_LINE.match(line) for line in text.splitlines()]
    return [(m["stage"], int(m["epoch"])) for m in found if m]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, str]:
    """`edgekd compress` of the tiny recipe (2 epochs a stage), progress bars not turned off,
    its output in a log file; the run directory and the log file's text."""
    work = tmp_path_factory.mktemp("logged")
    log = work / "compress.log"
    done = run_logged(["-m", "edgekd", "compress", tiny_recipe(work, 2), "--out", work / "run"], log, work)
    text = log.read_bytes().decode("utf-8")
    assert done.returncode == 0, text
    return work / "run", text


def test_log_file_has_one_line_per_epoch_per_stage_and_no_carriage_return(logged_run):
    _run, text = logged_run
    assert "\r" not in text  # no progress bar off a terminal
    assert epoch_lines(text) == TWO_EPOCHS, text


def test_metrics_csv_per_stage_has_one_row_per_epoch(logged_run):
    run, _text = logged_run
    report = json.loads((run / "report.json").read_text())
    for stage in ("teacher", "distill"):
        rows = read_rows(run / "metrics" / f"{stage}.csv")
        assert [int(row["epoch"]) for row in rows] == [1, 2] and {row["epochs"] for row in rows} == {"2"}
        for row, recorded in zip(rows, report["stages"][stage]["epochs"]):
            assert math.isclose(float(row["val_top1"]), recorded["val_top1"], rel_tol=1e-5)
            assert math.isclose(float(row["train_loss"]), recorded["loss"], rel_tol=1e-5)
            assert float(row["images_per_second"]) > 0 and float(row["lr"]) >= 0 and row["time"]
        assert float(rows[-1]["eta_seconds"]) == 0


def test_tensorboard_event_files_per_stage(logged_run):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'edgekd[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _text = logged_run
    for stage in ("teacher", "distill"):
        assert list((run / "tb" / stage).glob("events.out.tfevents.*")), f"no event file in tb/{stage}"
        events = EventAccumulator(str(run / "tb" / stage))
        events.Reload()
        assert [scalar.step for scalar in events.Scalars("val_top1")] == [1, 2]
        assert {"train_loss", "lr", "images_per_second"} <= set(events.Tags()["scalars"])


def test_resume_appends_rows_without_duplicates(tmp_path, monkeypatch):
    """Stopped (Ctrl-C) in teacher epoch 3 after the checkpoint of epoch 2; a row of epoch 3
    left by a crash between a row and its checkpoint is dropped, then written again."""
    from edgekd.train.loop import cross_entropy_step

    recipe = tiny_recipe(tmp_path, 3, limit_train=320, limit_test=100)
    steps_per_epoch = math.ceil(288 / 32)  # 320 images less the 10% val split, batches of 32
    calls = {"n": 0}

    def stopping_step(model):
        step = cross_entropy_step(model)

        def wrapped(*batch):
            calls["n"] += 1
            if calls["n"] == 2 * steps_per_epoch + 1:
                raise KeyboardInterrupt()
            return step(*batch)

        return wrapped

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr("edgekd.train.loop.cross_entropy_step", stopping_step)
        result = cli("compress", recipe, "--out", run, "--no-progress")
    assert result.exit_code == 130, result.output
    teacher_csv = run / "metrics" / "teacher.csv"
    assert [row["epoch"] for row in read_rows(teacher_csv)] == ["1", "2"]
    before = read_rows(teacher_csv)
    with open(teacher_csv, "a") as file:
        file.write("3,3,9.9,0,-1,0,0,0,0,forged\n")

    result = cli("compress", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    rows = read_rows(teacher_csv)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and rows[:2] == before
    assert rows[2]["time"] != "forged" and float(rows[2]["val_top1"]) > 0
    assert [row["epoch"] for row in read_rows(run / "metrics" / "distill.csv")] == ["1", "2", "3"]
    assert epoch_lines(result.stderr) == [("teacher", 3), ("distill", 1), ("distill", 2), ("distill", 3)]


PLAIN_SCRIPT = """\
import sys
import edgekd
edgekd.compress(sys.argv[1], sys.argv[2])
"""


def test_python_api_shows_epoch_lines_without_any_logging_setup(tmp_path):
    """A plain script (or a notebook): nobody configured logging, yet the lines show, once."""
    log = tmp_path / "script.log"
    done = run_logged(["-c", PLAIN_SCRIPT, tiny_recipe(tmp_path, 2), tmp_path / "run"], log, tmp_path)
    text = log.read_text()
    assert done.returncode == 0, text
    assert epoch_lines(text) == TWO_EPOCHS, text
    assert "[teacher] tinycnn: val top-1" in text  # the run's other messages too
    assert "\r" not in text


def test_python_api_leaves_configured_logging_alone(monkeypatch):
    from edgekd.api import visible_log

    edgekd_logger, root = logging.getLogger("edgekd"), logging.getLogger()
    monkeypatch.setattr(edgekd_logger, "handlers", [])
    monkeypatch.setattr(edgekd_logger, "level", logging.NOTSET)
    monkeypatch.setattr(root, "handlers", [])
    with visible_log():  # nothing configured: one handler of its own, at INFO, for the call
        assert len(edgekd_logger.handlers) == 1 and edgekd_logger.getEffectiveLevel() == logging.INFO
    assert edgekd_logger.handlers == [] and edgekd_logger.level == logging.NOTSET
    users = logging.StreamHandler()
    monkeypatch.setattr(root, "handlers", [users])
    with visible_log():  # the user's own setup (basicConfig): no second handler, no duplicate lines
        assert edgekd_logger.handlers == [] and root.handlers == [users]


class _Stream:
    def __init__(self, terminal: bool):
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize(("terminal", "enabled", "shown"),
                         [(True, True, True), (False, True, False), (True, False, False)])
def test_progress_bars_only_on_a_terminal(monkeypatch, terminal, enabled, shown):
    from edgekd.progress import progress_bar

    monkeypatch.setattr(sys, "stderr", _Stream(terminal))
    bar = progress_bar(total=3, enabled=enabled, desc="t")
    assert bar.disable is (not shown)
    bar.close()
    items = [1, 2]
    assert (progress_bar(items, enabled=enabled) is items) is (not shown)
