"""Resume within a training stage, and faults: Ctrl-C, SIGTERM, a diverging loss, a crash
or a full disk while a checkpoint is written, corrupt resume state.

One tiny recipe (600 train images, TinyCNN teacher of width 8 and student of width 4, 3
epochs each) in deterministic mode. The uninterrupted reference run and most faults run
in this process through the CLI (click's CliRunner); real signals go to a real
subprocess. Every comparison of final weights is byte for byte on the safetensors files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from edgekd.cli import main
from edgekd.errors import ModelFileError, TrainingDiverged
from edgekd.io.artifacts import load_checkpoint
from edgekd.train.config import TrainConfig
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData

REPO = Path(__file__).resolve().parents[2]

# `deterministic` is left out on purpose: the reference run sets it with --deterministic
RECIPE = """\
name: tiny
seed: 3
data:
  limit_train: 600
  limit_test: 100
  calib_size: 32
teacher:
  arch: tinycnn
  arch_args: {width: 8}
  epochs: 3
  batch_size: 32
  lr: 0.01
  augment: true
distill:
  arch: tinycnn
  arch_args: {width: 4}
  epochs: 3
  batch_size: 32
  lr: 0.01
  augment: true
quantize:
  max_drop: 2.0  # 59 val images resolve 1.7 points: a 1-point budget is refused (the allowed drop stays 5.1)
bench:
  warmup: 1
  runs: 5
  min_seconds: 0
"""
STEPS_PER_EPOCH = 17  # 540 training images (600 less 10% val) in batches of 32
TEACHER_CKPT = "state/teacher.ckpt"
DISTILL_CKPT = "state/distill.ckpt"

# Runs a real `edgekd` process whose training steps sleep, so that a signal sent once the
# first epoch's checkpoint exists lands in the middle of the second epoch. The sleep is
# patched in here, by the test; edgekd itself has no test hook. SIGINT is reset to
# Python's default handler because a shell may start background processes with it ignored.
SLOW_EDGEKD = """\
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import edgekd.distill.offline, edgekd.train.loop

def slow(make_step):
    def make(*args):
        step = make_step(*args)
        def slow_step(*a):
            time.sleep(0.05)
            return step(*a)
        return slow_step
    return make

edgekd.train.loop.cross_entropy_step = slow(edgekd.train.loop.cross_entropy_step)
edgekd.distill.offline.kd_step = slow(edgekd.distill.offline.kd_step)
from edgekd.cli import main
main(sys.argv[1:], prog_name="edgekd")
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread_and_cublas_env():
    # the same thread count as the subprocesses (OMP_NUM_THREADS=1): a condition of equal weights
    torch.set_num_threads(1)
    # deterministic mode sets this for CUDA users; keep it out of the rest of the test session
    before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    yield
    if before is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before


def edgekd(*args) -> Result:
    """The real command, in this process."""
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    """The one error line on stderr; no traceback."""
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgekd: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def slow_edgekd(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", SLOW_EDGEKD, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"edgekd ended (exit {proc.returncode}) before {path.name} appeared: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def assert_same_weights(run: Path, reference: Path, *names: str) -> None:
    for name in names:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs from the reference"


def no_temp_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def reference(recipe_file, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref") / "run"
    result = edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def stopped_in_teacher_epoch_2(recipe_file, tmp_path_factory) -> Path:
    """A run stopped by Ctrl-C (KeyboardInterrupt) at the first step of teacher epoch 2,
    in this process; kept pristine, tests work on copies."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("edgekd.train.loop.cross_entropy_step", failing_step(at=STEPS_PER_EPOCH + 1, error=KeyboardInterrupt))
        result = edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.stderr and f"edgekd compress --resume {out}" in result.stderr
    return out


def failing_step(at: int, error=None, nan: bool = False, before=None):
    """A cross_entropy_step whose step number `at` (1-based) raises `error` or returns a NaN loss."""
    calls = {"n": 0}

    def make(model):
        step = cross_entropy_step(model)

        def wrapped(images, labels, index):
            calls["n"] += 1
            if calls["n"] == at:
                if before is not None:
                    before()
                if error is not None:
                    raise error()
                if nan:
                    loss, logits = step(images, labels, index)
                    return loss * float("nan"), logits
            return step(images, labels, index)

        return wrapped

    return make


# -- resume after a signal: the same final weights as an uninterrupted run -------------------------


def test_deterministic_flag_sets_the_recipe_field(reference, recipe_file, tmp_path):
    assert "deterministic" not in recipe_file.read_text()
    resolved = (reference / "recipe.yaml").read_text()
    assert "deterministic: true" in resolved.splitlines()
    # a resumed run takes its own recipe: the flag is refused there
    result = edgekd("compress", "--resume", reference, "--deterministic")
    assert result.exit_code == 2 and "--resume takes the run's own recipe.yaml" in error_line(result)
    # checkpoints are removed once their stage is done; the weights files are the artifacts
    assert not (reference / TEACHER_CKPT).exists() and not (reference / DISTILL_CKPT).exists()
    assert no_temp_files(reference / "state")


def test_sigint_mid_epoch_then_resume_gives_identical_weights(reference, recipe_file, tmp_path):
    out = tmp_path / "run"
    proc = slow_edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    wait_for(out / TEACHER_CKPT, proc)  # epoch 1 is done: the signal lands in epoch 2
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    saved = load_checkpoint(out / TEACHER_CKPT)
    assert saved["epoch"] == 1 and saved["threads"] == 1  # stopped mid-epoch 2, not after it
    assert no_temp_files(out / "state")
    assert not (out / "teacher.safetensors").exists()

    result = edgekd("compress", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "[teacher] resuming after epoch 1 of 3" in result.stderr
    assert_same_weights(out, reference, "teacher.safetensors", "student.safetensors")
    report = json.loads((out / "report.json").read_text())
    assert [e["epoch"] for e in report["stages"]["teacher"]["epochs"]] == [1, 2, 3]  # history kept
    assert not (out / TEACHER_CKPT).exists()


def test_sigterm_mid_distill_epoch_keeps_a_loadable_checkpoint(reference, recipe_file, tmp_path):
    out = tmp_path / "run"
    proc = slow_edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    wait_for(out / DISTILL_CKPT, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    saved = load_checkpoint(out / DISTILL_CKPT)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    assert set(saved) >= {"model", "optimizer", "scheduler", "generator", "torch_rng", "best", "history"}
    progress = json.loads((out / "state/progress.json").read_text())
    assert set(progress["done"]) == {"data", "teacher"}
    assert not (out / TEACHER_CKPT).exists()  # the teacher stage is done: its weights file is the artifact
    assert no_temp_files(out / "state")

    result = edgekd("compress", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "[distill] resuming after epoch 1 of 3" in result.stderr
    assert_same_weights(out, reference, "teacher.safetensors", "student.safetensors")


def test_interrupt_between_stages_resumes_to_the_same_student(reference, recipe_file, tmp_path):
    """Stopped at the first distill step, before any distill checkpoint: the resumed run
    must initialize the student from the same RNG state as the uninterrupted one."""
    out = tmp_path / "run"

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("edgekd.distill.offline.kd_step", lambda *a: interrupted)
        result = edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    assert result.exit_code == 130
    assert not (out / DISTILL_CKPT).exists() and (out / "teacher.safetensors").is_file()
    torch.manual_seed(12345)  # whatever this process did in between must not matter
    result = edgekd("compress", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert_same_weights(out, reference, "teacher.safetensors", "student.safetensors")


# -- a diverging loss ---------------------------------------------------------------------------------


def test_nan_loss_exits_4_and_keeps_the_last_good_checkpoint(recipe_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = {}

    def snapshot():  # the checkpoint as it is when the loss turns NaN (written after epoch 1)
        seen["bytes"] = (out / TEACHER_CKPT).read_bytes()

    at = STEPS_PER_EPOCH + 5  # in epoch 2
    monkeypatch.setattr("edgekd.train.loop.cross_entropy_step", failing_step(at=at, nan=True, before=snapshot))
    result = edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    assert result.exit_code == 4
    line = error_line(result)
    assert "teacher: loss became nan at epoch 2" in line
    assert f"checkpoint of epoch 1 is kept in {out / TEACHER_CKPT}" in line
    assert "lower teacher.lr (now 0.01)" in line
    assert (out / TEACHER_CKPT).read_bytes() == seen["bytes"]  # no checkpoint for the diverged epoch
    assert load_checkpoint(out / TEACHER_CKPT)["epoch"] == 1
    assert not (out / "teacher.safetensors").exists()


# -- a crash, a second Ctrl-C or a full disk while a checkpoint is written --------------------------




FIT_CFG = TrainConfig(epochs=3, batch_size=16, lr=0.05, weight_decay=1e-3, augment=False)


def train_linear(data, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    run = RunOptions(seed=5, progress=False, **kwargs)
    result = fit(model, cross_entropy_step(model), TrainData.of(**data), FIT_CFG, run)
    return model, result


def _partial_write_then(error):
    """A torch.save that writes half a file, then fails: a crash midway through the write."""

    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip file")
        raise error

    return save


@pytest.mark.parametrize(
    "error",
    [RuntimeError("simulated crash"), KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")],
    ids=["crash", "second-ctrl-c", "enospc"],
)
def test_failed_checkpoint_write_keeps_the_previous_one(separable, tmp_path, error):
    ckpt = tmp_path / "state" / "teacher.ckpt"
    expected_model, expected = train_linear(separable)  # uninterrupted, no checkpoints at all

    real_save = torch.save
    calls = {"n": 0}
    before = {}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the write at the end of epoch 2
            before["bytes"] = ckpt.read_bytes()
            return _partial_write_then(error)(obj, f)
        return real_save(obj, f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(type(error)) as info:
        mp.setattr(torch, "save", save)
        train_linear(separable, checkpoint=ckpt)
    if isinstance(error, OSError):
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpt)
        assert "previous checkpoint is kept" in info.value.strerror
    assert ckpt.read_bytes() == before["bytes"]  # untouched
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["teacher.ckpt"]  # no temp file left

    model, result = train_linear(separable, checkpoint=ckpt, resume=True)
    for key, value in expected_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert [e["val_top1"] for e in result.epochs] == [e["val_top1"] for e in expected.epochs]
    assert [e["loss"] for e in result.epochs] == [e["loss"] for e in expected.epochs]
    assert (result.best_epoch, result.best_val_top1) == (expected.best_epoch, expected.best_val_top1)


def test_full_disk_via_the_cli_is_one_line_and_resumable(reference, recipe_file, tmp_path):
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # teacher epoch 2
            return _partial_write_then(OSError(errno.ENOSPC, "No space left on device"))(obj, f)
        return real_save(obj, f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", save)
        result = edgekd("compress", recipe_file, "--deterministic", "--out", out, "--no-progress")
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"edgekd: error: disk full while writing '{out / TEACHER_CKPT}'")
    assert f"continue with: edgekd compress --resume {out}" in line
    assert load_checkpoint(out / TEACHER_CKPT)["epoch"] == 1
    assert no_temp_files(out / "state")

    result = edgekd("compress", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert_same_weights(out, reference, "teacher.safetensors", "student.safetensors")


def test_non_finite_weights_write_no_checkpoint(separable, tmp_path):
    """A finite loss can still leave inf weights after the optimizer step: that epoch is
    diverged too, and its checkpoint is never written."""
    ckpt = tmp_path / "c.ckpt"
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    step = cross_entropy_step(model)
    calls = {"n": 0}

    def poisoning_step(images, labels, index):
        calls["n"] += 1
        loss, logits = step(images, labels, index)  # finite
        if calls["n"] == 2 * 8:  # the last step of epoch 2 (8 steps per epoch)
            with torch.no_grad():
                model.bias.fill_(float("inf"))  # after the loss: only the weights are non-finite
            kept["bytes"] = ckpt.read_bytes()
        return loss, logits

    kept = {}
    with pytest.raises(TrainingDiverged, match="weights became non-finite at epoch 2; the checkpoint of epoch 1"):
        fit(model, poisoning_step, TrainData.of(**separable), FIT_CFG, RunOptions(progress=False, checkpoint=ckpt,
                                                                                 desc="teacher"))
    assert ckpt.read_bytes() == kept["bytes"] and load_checkpoint(ckpt)["epoch"] == 1


# -- corrupt resume state: refused, one line, nothing overwritten -----------------------------------


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CANARY_PAYLOAD = "import os; open({path!r}, 'w').close()"


class _Exploit:
    """Pickles into a call of exec(): a weights_only load must refuse it, never run it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (CANARY_PAYLOAD.format(path=self.path),))


@pytest.mark.parametrize(
    "damage", ["truncated", "garbage", "empty", "pickled-code", "not-a-checkpoint", "wrong-shapes"]
)
def test_corrupt_checkpoint_is_refused(stopped_in_teacher_epoch_2, tmp_path, canary, damage):
    run = tmp_path / "run"
    shutil.copytree(stopped_in_teacher_epoch_2, run)
    ckpt = run / TEACHER_CKPT
    good = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(4096))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "pickled-code":
        torch.save({"format": "edgekd.checkpoint/1", "x": _Exploit(canary)}, ckpt)
    elif damage == "not-a-checkpoint":
        torch.save({"weight": torch.zeros(2)}, ckpt)
    elif damage == "wrong-shapes":  # readable, but its model does not fit this run
        state = load_checkpoint(ckpt)
        state["model"] = {k: torch.zeros(1) for k in state["model"]}
        torch.save(state, ckpt)
    before = snapshot(run)
    result = edgekd("compress", "--resume", run, "--no-progress")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert str(ckpt) in line and "start a new run" in line
    assert snapshot(run) == before  # nothing overwritten, nothing added
    assert not canary.exists()
    if damage == "pickled-code":  # control: the payload is real, an unsafe load would have run it
        torch.load(ckpt, weights_only=False)
        assert canary.exists()


@pytest.mark.parametrize(
    "text",
    ['{"done": {"data": {"train": 540', "not json at all", '{"done": []}', '{"done": {"data": 1}}',
     '{"done": {"data": {}}, "torch_rng": "bm90IGEgc3RhdGU="}', b"\xff\xfe\x00garbage"],
    ids=["truncated", "not-json", "done-not-a-dict", "stage-not-a-dict", "bad-rng", "binary"],
)
def test_corrupt_progress_file_is_refused(stopped_in_teacher_epoch_2, tmp_path, text):
    run = tmp_path / "run"
    shutil.copytree(stopped_in_teacher_epoch_2, run)
    progress = run / "state/progress.json"
    progress.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(run)
    result = edgekd("compress", "--resume", run, "--no-progress")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert str(progress) in line and "start a new run" in line
    assert snapshot(run) == before


def test_checkpoint_of_a_different_setup_is_refused(separable, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    train_linear(separable, checkpoint=ckpt)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    other = TrainConfig(epochs=3, batch_size=16, lr=0.1, weight_decay=1e-3, augment=False)  # lr changed
    with pytest.raises(ModelFileError, match="was written for a different train setup"):
        fit(model, cross_entropy_step(model), TrainData.of(**separable), other,
            RunOptions(seed=5, progress=False, checkpoint=ckpt, resume=True))


def test_deterministic_mode_is_scoped():
    from edgekd.pipeline.runstate import deterministic_mode

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()


def test_force_run_drops_an_old_runs_checkpoint(stopped_in_teacher_epoch_2, recipe_file, tmp_path):
    """A new run into an old run's directory (--force) starts from epoch 1, and a later
    --resume must not pick up the old run's checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(stopped_in_teacher_epoch_2, run)
    assert (run / TEACHER_CKPT).is_file()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("edgekd.train.loop.cross_entropy_step", failing_step(at=1, error=KeyboardInterrupt))
        result = edgekd("compress", recipe_file, "--deterministic", "--out", run, "--force", "--no-progress")
    assert result.exit_code == 130
    assert not (run / TEACHER_CKPT).exists()
    assert set(json.loads((run / "state/progress.json").read_text())["done"]) == {"data"}  # a fresh start


def test_full_disk_on_any_atomic_write_names_the_destination(tmp_path, monkeypatch):
    from edgekd.io.artifacts import atomic_write_bytes

    target = tmp_path / "report.json"
    target.write_bytes(b"old")

    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
