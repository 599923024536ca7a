"""compute.threads (edgekd.train.threads): the CPUs a run may use (affinity, cgroup CPU quota,
torch's count), auto's re-measuring on the training loop's own steps with a fake clock, an
explicit number used as given, and the count ONNX Runtime's calibration sessions get."""

from __future__ import annotations

import pytest

from edgekd.errors import ConfigError
from edgekd.io import membudget
from edgekd.train import threads
from edgekd.train.threads import ThreadChoice, ThreadTuner, TunerHooks


def _cgroup_v2(tmp_path, cpu_max: str | None, parent_max: str | None = None):
    """A fake cgroup v2 mount with this process in /jobs/edgekd, and the files pointing at it."""
    mount = tmp_path / "cgroup"
    leaf = mount / "jobs" / "edgekd"
    leaf.mkdir(parents=True)
    if cpu_max is not None:
        (leaf / "cpu.max").write_text(cpu_max + "\n")
    if parent_max is not None:
        (mount / "jobs" / "cpu.max").write_text(parent_max + "\n")
    (tmp_path / "cgroup-self").write_text("0::/jobs/edgekd\n")
    (tmp_path / "mountinfo").write_text(f"30 24 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    return tmp_path / "cgroup-self", tmp_path / "mountinfo"


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    """4 CPUs of affinity and a cgroup v2 hierarchy from tmp files: call it with cpu.max texts."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)

    def make(cpu_max, parent_max=None):
        self_cgroup, mountinfo = _cgroup_v2(tmp_path, cpu_max, parent_max)
        monkeypatch.setattr(membudget, "SELF_CGROUP", str(self_cgroup))
        monkeypatch.setattr(membudget, "MOUNTINFO", str(mountinfo))

    return make


# -- the CPUs this process may use --------------------------------------------------------------

def test_cpu_limit_is_the_affinity_without_a_quota(fake_machine):
    fake_machine("max 100000")
    assert threads.cgroup_cpu_quota() is None
    assert threads.cpu_limit() == 4


def test_a_cgroup_v2_quota_limits_the_cpus_rounded_up(fake_machine):
    fake_machine("150000 100000")  # 1.5 CPUs: a second thread still gets half a CPU
    assert threads.cgroup_cpu_quota() == 1.5
    assert threads.cpu_limits() == {"affinity": 4, "cgroup quota": 1.5}
    assert threads.cpu_limit() == 2


def test_a_parent_cgroups_quota_binds_too(fake_machine):
    fake_machine("max 100000", parent_max="100000 100000")
    assert threads.cpu_limit() == 1


def test_the_data_workers_follow_the_quota(fake_machine):
    from edgekd.data.config import DataConfig

    fake_machine("200000 100000")
    assert DataConfig().worker_count() == 2  # min(4 workers, 2 CPUs of quota), not the 4 of affinity
    assert DataConfig(workers=3).worker_count() == 3  # a number as given


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    limited, unlimited = tmp_path / "a", tmp_path / "b"
    for folder, quota in ((limited, "50000"), (unlimited, "-1")):
        folder.mkdir()
        (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota([(1, str(limited)), (1, str(unlimited))]) == 0.5
    assert threads.cgroup_cpu_quota([(1, str(unlimited)), (1, str(tmp_path / "missing"))]) is None
    assert threads.budget_of({"affinity": 8, "cgroup quota": 0.5}) == 1  # never below one thread


def test_auto_starts_from_the_smallest_limit_torch_included(fake_machine, monkeypatch):
    import torch

    fake_machine("300000 100000")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's count: the physical cores
    choice = threads.choose("auto")
    assert (choice.budget, choice.count) == (2, 2)
    assert choice.limits == {"affinity": 4, "cgroup quota": 3.0, "torch default": 2}
    explicit = threads.choose(3)
    assert (explicit.setting, explicit.count) == (3, 3)  # a number as given, over the budget too


@pytest.mark.parametrize("value", [0, -1, 1025, "x", "2"])
def test_a_bad_setting_is_a_one_line_config_error(value):
    from edgekd.train.config import ComputeConfig

    with pytest.raises(ConfigError, match="compute.threads must be auto or a whole number of threads") as err:
        ComputeConfig(threads=value)
    assert "\n" not in str(err.value)


def test_the_recipe_reads_compute_threads():
    from edgekd.recipe import Recipe

    assert Recipe().compute.threads == "auto"
    assert Recipe.default(["compute.threads=2"]).compute.threads == 2
    with pytest.raises(ConfigError, match="compute.threads"):
        Recipe.default(["compute.threads=2.5"])


# -- auto re-measures on the loop's steps (fake clock) ------------------------------------------

class FakeSteps:
    """Drives a ThreadTuner as the training loop does; each step takes `seconds[count]` on a
    fake clock, count being the thread count the tuner set for it."""

    def __init__(self, choice: ThreadChoice, seconds: dict, steps_per_epoch: int = 10, others=None, **kwargs):
        """others: the CPUs other processes use, as the load probe reads it (None: unknown)."""
        self.now, self.count, self.seconds, self.set_calls, self.lines = 0.0, None, seconds, [], []
        self.others = others
        self.step_counts = []  # the count each step ran with
        hooks = TunerHooks(timer=lambda: self.now, set_threads=self._set, deterministic=False,
                           load=lambda: self.others)
        self.tuner = ThreadTuner(choice, steps_per_epoch=steps_per_epoch, desc="teacher", log=self.lines.append,
                                 hooks=hooks, **kwargs)
        self.steps_per_epoch = steps_per_epoch

    def _set(self, count: int) -> None:
        self.count = count
        self.set_calls.append(count)

    def run(self, epochs: int, batch: int = 128) -> None:
        for epoch in range(1, epochs + 1):
            self.now += 5.0  # validation, checkpoint: not a step's time
            self.tuner.epoch_started(epoch)
            for _ in range(self.steps_per_epoch):
                self.step_counts.append(self.count)
                self.now += self.seconds[self.count]
                self.tuner.step_done(batch)


P = threads.PROBE_STEPS  # the steps before the first check


def test_beside_a_busy_process_auto_moves_to_the_faster_count():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.22, 1: 0.08}, others=1.0)  # the 573 vs 1,587 img/s
    steps.run(epochs=2)
    assert choice.count == 1 and steps.count == 1
    # the current count's steps are timed in the probe window; one round of 1 is enough when it
    # is far faster: 2 is not tried again (its steps cost the most)
    assert steps.step_counts[:P + 8] == [2] * P + [1] * 8
    [change] = choice.changes
    assert change["from"] == 2 and change["to"] == 1 and change["stage"] == "teacher"
    assert change["img_per_s"] == {"2": 581.8, "1": 1600.0}  # 128 images / 0.22 s and / 0.08 s
    assert steps.tuner.record()["threads"]["changes"] == [change]
    assert steps.tuner.record()["threads"]["count"] == 1
    assert any(line.startswith("[teacher] threads: 2 -> 1 (") for line in steps.lines)


def test_alone_auto_keeps_the_count_without_a_trial_so_the_run_computes_as_before():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.054, 1: 0.079}, others=0.1)  # 2,363 vs 1,621 img/s
    steps.run(epochs=4)
    assert choice.count == 2 and choice.changes == []
    assert set(steps.set_calls) == {2}  # never another count: the same sums as a fixed count of 2
    assert steps.lines == ["[teacher] threads: auto keeps 2 (other processes use 0.1 of the 2 CPUs this "
                           "process may use)"]


def test_where_the_load_cannot_be_read_it_tries_and_keeps_the_faster():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.054, 1: 0.079}, others=None)
    steps.run(epochs=4)
    assert choice.count == 2 and choice.changes == []
    assert steps.lines == ["[teacher] threads: auto keeps 2 (2: 2,370 img/s, 1: 1,620 img/s)"]
    assert set(steps.set_calls) == {1, 2}  # it did try one fewer


def test_a_trial_that_finds_no_faster_count_keeps_the_current_one():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.054, 1: 0.079}, others=1.0)  # a neighbour that does not slow us
    steps.run(epochs=1)
    assert choice.count == 2 and set(steps.set_calls) == {1, 2}


def test_a_too_short_window_waits_for_more_steps():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.001, 1: 0.001}, steps_per_epoch=1000, others=1.0)
    steps.now = -5.0  # the epoch's 5 s gap ends at 0: the window is the steps' own time
    steps.run(epochs=1)
    first_one = steps.step_counts.index(1)
    assert 300 <= first_one <= 300 + 2 * P  # 0.3 s of 1 ms steps, not the first P steps


def test_a_small_difference_is_no_reason_to_change():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    FakeSteps(choice, {2: 0.100, 1: 0.098}).run(epochs=2)  # 2% faster: within the margin
    assert choice.count == 2


def test_the_trials_alternate_and_time_steps_only():
    choice = ThreadChoice(setting="auto", budget=3, count=2)
    steps = FakeSteps(choice, {1: 0.1, 2: 0.1, 3: 0.1}, steps_per_epoch=100)  # the load unknown
    steps.run(epochs=1)
    # the current count timed in the probe window; then one fewer, one more (within the budget),
    # each a settling step and two timed ones; then the other way round with the current one;
    # then the count kept until the next trial
    trial = steps.step_counts[P:P + 16]
    assert trial == [1] * 3 + [3] * 3 + [3] * 3 + [1] * 3 + [2] * 3 + [2]
    assert set(steps.step_counts[P + 15:]) == {2}  # all alike: kept


def test_it_re_measures_every_few_epochs_and_goes_back_up_when_the_load_is_gone():
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.22, 1: 0.08}, steps_per_epoch=20, others=1.0)
    steps.run(epochs=1)
    assert choice.count == 1
    steps.seconds, steps.others = {2: 0.054, 1: 0.079}, 0.0  # the busy process ended
    steps.run(epochs=threads.MEASURE_EVERY_EPOCHS + 1)
    assert choice.count == 2
    assert [(c["from"], c["to"]) for c in choice.changes] == [(2, 1), (1, 2)]


def test_an_explicit_number_is_used_as_given():
    choice = ThreadChoice(setting=2, budget=2, count=2)
    steps = FakeSteps(choice, {2: 0.22, 1: 0.08})
    steps.run(epochs=4)
    assert steps.set_calls == [2] and choice.count == 2 and steps.lines == []
    assert steps.tuner.record()["threads"] == {"setting": 2, "count": 2, "limits": {}, "changes": []}


def test_no_tuning_on_a_gpu_with_one_cpu_or_deterministic():
    for choice, device in ((ThreadChoice(setting="auto", budget=2, count=2), "cuda"),
                           (ThreadChoice(setting="auto", budget=1, count=1), "cpu")):
        steps = FakeSteps(choice, {2: 0.22, 1: 0.08}, device_type=device)
        steps.run(epochs=2)
        assert len(set(steps.set_calls)) == 1 and choice.changes == []
    choice, lines = ThreadChoice(setting="auto", budget=2, count=2), []
    tuner = ThreadTuner(choice, steps_per_epoch=5, desc="distill", log=lines.append,
                        hooks=TunerHooks(set_threads=lambda n: None, deterministic=True))
    assert not tuner.active
    assert lines == ["[distill] threads: auto keeps 2 (deterministic: a count that followed the machine's load "
                     "would change the weights); compute.threads: N fixes another"]


def test_outside_a_run_nothing_is_set():
    calls = []
    tuner = ThreadTuner(None, steps_per_epoch=5, hooks=TunerHooks(set_threads=calls.append))
    tuner.epoch_started(1)
    tuner.step_done(8)
    tuner.finish()
    assert calls == [] and tuner.record() == {}


# -- in the training loop and around it -----------------------------------------------------------

def _tiny_fit(make_tiny_cnn, tiny_images, compute, monkeypatch, seconds):
    """fit() on 64 tiny images (8 steps an epoch, 3 epochs) under `compute`; each step takes
    seconds[torch's thread count] on a fake clock."""
    import torch

    from edgekd.train.compute import use
    from edgekd.train.config import TrainConfig
    from edgekd.train.loop import cross_entropy_step, fit
    from edgekd.train.plumbing import RunOptions, TrainData

    now = [0.0]
    monkeypatch.setattr(threads, "clock", lambda: now[0])
    monkeypatch.setattr(threads, "load_probe", lambda: (lambda: 1.0))  # one busy process beside it
    model = make_tiny_cnn()
    step = cross_entropy_step(model)

    def timed_step(images, labels, index):
        now[0] += seconds[torch.get_num_threads()]
        return step(images, labels, index)

    x, y = tiny_images(64), torch.arange(64) % 3
    lines = []
    with use(compute):
        result = fit(model, timed_step, TrainData.of(x, y, x[:16], y[:16]), TrainConfig(epochs=3, batch_size=8),
                     RunOptions(progress=False, log=lines.append, desc="teacher"))
        inside = torch.get_num_threads()
    return result, lines, inside


def test_fit_switches_threads_on_its_own_steps_and_records_it(make_tiny_cnn, tiny_images, monkeypatch):
    import torch

    from edgekd.train.compute import Compute

    before = torch.get_num_threads()
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    result, lines, inside = _tiny_fit(make_tiny_cnn, tiny_images, Compute(threads=choice), monkeypatch,
                                      {2: 0.5, 1: 0.1})
    assert inside == 1 and choice.count == 1
    assert result.compute["threads"]["count"] == 1
    assert [(c["from"], c["to"]) for c in result.compute["threads"]["changes"]] == [(2, 1)]
    assert any("threads: 2 -> 1" in line for line in lines)
    assert len(result.epochs) == 3 and all(e["loss"] > 0 for e in result.epochs)  # the trial steps trained
    assert torch.get_num_threads() == before  # use() gives the count back


def test_fit_with_a_number_keeps_it(make_tiny_cnn, tiny_images, monkeypatch):
    from edgekd.train.compute import resolve

    result, lines, inside = _tiny_fit(make_tiny_cnn, tiny_images, resolve("cpu", "fp32", False, threads=2),
                                      monkeypatch, {2: 0.5, 1: 0.1})
    assert inside == 2
    assert result.compute["threads"]["setting"] == 2 and result.compute["threads"]["changes"] == []
    assert not any("threads" in line for line in lines)


def test_calibration_sessions_get_the_runs_count(tiny_onnx, calib_images):
    from edgekd.onnx_export import INPUT_NAME
    from edgekd.quant.calibration import ActivationBatches, ArrayCalibrationReader
    from edgekd.train.compute import Compute, session_threads, use

    path, _model = tiny_onnx

    def session_threads_of_calibration():
        batches = ActivationBatches(path, ArrayCalibrationReader(calib_images, INPUT_NAME, batch_size=8))
        return batches.open().get_session_options().intra_op_num_threads

    assert session_threads() == 0  # outside a run: ONNX Runtime's own default
    assert session_threads_of_calibration() == 0
    choice = ThreadChoice(setting="auto", budget=2, count=2)
    with use(Compute(threads=choice)):
        choice.count = 1  # as auto left it after training beside a busy process
        assert session_threads() == 1
        assert session_threads_of_calibration() == 1


def test_the_load_probe_sees_another_process_and_not_its_own_children():
    """OtherLoad on the real /proc: a busy process that is not ours counts, our own busy child
    (a DataLoader worker) does not."""
    import subprocess
    import sys
    import time

    busy = [sys.executable, "-c", "import time; end = time.time() + 3\nwhile time.time() < end: pass"]
    probe = threads.OtherLoad()
    probe()
    child = subprocess.Popen(busy)  # ours: counted as this process's CPU time
    time.sleep(1.0)
    with_child = probe()
    child.kill()
    child.wait()
    # a process of someone else's: started through a shell that exits at once (re-parented)
    subprocess.run(["sh", "-c", " ".join(f"'{a}'" for a in busy) + " >/dev/null 2>&1 &"], check=True)
    probe()
    time.sleep(1.0)
    with_other = probe()
    assert with_child is not None and with_other is not None
    assert with_other > 0.5 and with_other > with_child + 0.4, (with_child, with_other)

