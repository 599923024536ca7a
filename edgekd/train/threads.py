"""How many CPU threads a run computes with (`compute.threads`): torch's intra-op threads while
training, and ONNX Runtime's in edgekd's own sessions (calibration, the budget search, val
accuracy). `edgekd bench` keeps its explicit, stated count: a latency measurement must not
change its own settings.

- An integer is used as given.
- `auto` (the default) starts from the CPUs this process may use: its affinity, the cgroup
  CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us) and torch's count when the
  run starts (its default: the physical cores; a program that set it lower has chosen), the
  smallest of them. With threads that wait for each other at every operator, one thread
  that shares its core with another process holds up all the others (2 threads beside one
  busy process trained 2.8x slower than 1 thread). So at the start and every few epochs the
  training loop reads how much CPU other processes took on this process's CPUs (/proc/stat
  less this process and its children: `OtherLoad`). Where that leaves fewer CPUs free than
  the threads in use (or more, after a count was lowered), it times a few of its own steps
  at the current count and the next one towards the free CPUs, alternating, and keeps the
  faster. These are normal training steps, nothing is trained twice; a change is logged and
  recorded in the stage's record (`compute.threads`).

The thread count changes the last bits of bf16/fp32 sums (oneDNN splits reductions by
thread), so a run whose count changes does not end with the same weights as one at a fixed
count. On an otherwise idle machine auto never changes the count (no trial is made), so the
run computes as with the fixed count it started from. With `deterministic: true`, auto keeps
its starting count (no re-measure); give an integer to have the same count on every machine.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

logger = logging.getLogger("edgekd")

MAX_THREADS = 1024
MEASURE_EVERY_EPOCHS = 3  # a trial at the start, then after every this many epochs of steps
MAX_STEPS_BETWEEN = 2000  # ... or after this many steps, whichever comes first (long epochs)
SETTLE_STEPS = 1  # after a switch, untimed: the thread pool resizes, oneDNN creates its kernels
TIMED_STEPS = 2  # per count and round
ROUNDS = 2  # the counts alternate (A B, then B A), so a change of the machine's load hits each alike
MARGIN = 1.05  # another count must be this much faster than the current one to replace it
CLEAR_WIN = 1.5  # after the first round, a count this much faster than every other one wins at once
PROBE_STEPS = 4  # the other processes' load is read over this many steps before each trial is due
MIN_PROBE_SECONDS = 0.3  # ... and at least this long (/proc/stat counts in 10 ms ticks)
FREE_MARGIN = 0.5  # CPUs: a count this far above (below) the free CPUs is tried one lower (higher)
clock = time.perf_counter  # what the trials time steps with (a module name: tests put a fake clock here)


def affinity_cpus() -> int:
    """The CPUs the scheduler lets this process run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_quota(dirs: Optional[list] = None) -> Optional[float]:
    """The tightest cgroup CPU quota over this process's cgroup levels, in CPUs (1.5: 150 ms
    per 100 ms period); None without one. `dirs`: [(version, directory)], by default
    edgekd.io.membudget.cgroup_dirs("cpu")."""
    if dirs is None:
        from edgekd.io.membudget import cgroup_dirs

        dirs = cgroup_dirs("cpu")
    quotas = [q for q in (_quota(version, directory) for version, directory in dirs) if q is not None]
    return min(quotas) if quotas else None


def _quota(version: int, directory: str) -> Optional[float]:
    if version == 2:
        words = (_read(os.path.join(directory, "cpu.max")) or "").split()
        quota, period = (words + ["", ""])[:2] if words else ("", "")
    else:
        quota = _read(os.path.join(directory, "cpu.cfs_quota_us")) or ""
        period = _read(os.path.join(directory, "cpu.cfs_period_us")) or ""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max", missing or unreadable: no quota at this level
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


class OtherLoad:
    """Each call: the CPUs that other processes used, on the CPUs this process may run on, since
    the previous call (its /proc/stat busy ticks less this process's and its live children's, the
    DataLoader workers); None on the first call or without /proc."""

    def __init__(self):
        try:
            self.cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)}
            self.tick = os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):
            self.cpus, self.tick = set(), 0
        self.last = None

    def __call__(self) -> Optional[float]:
        sample = self._sample()
        last, self.last = self.last, sample
        if sample is None or last is None or sample[0] <= last[0]:
            return None
        seconds = sample[0] - last[0]
        others = (sample[1] - last[1]) - (sample[2] - last[2])
        return max(0.0, others / self.tick / seconds)

    def _sample(self) -> Optional[tuple]:
        if not self.cpus or not self.tick:
            return None
        stat = _read("/proc/stat")
        own = _process_ticks(os.getpid())
        if stat is None or own is None:
            return None
        busy = 0
        for line in stat.splitlines():
            words = line.split()
            if words and words[0] in self.cpus and len(words) >= 9:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, words[1:9])
                busy += user + nice + system + irq + softirq + steal
        return time.monotonic(), busy, own + _children_ticks(os.getpid())


def _process_ticks(pid: int) -> Optional[int]:
    """utime + stime of one process (all its threads), in clock ticks."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def _children_ticks(pid: int) -> int:
    total = 0
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0
    for entry in entries:
        text = _read(f"/proc/{entry}/stat")
        fields = text.rpartition(")")[2].split() if text else []
        if len(fields) > 12 and fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total


load_probe = OtherLoad  # what a tuner reads the other processes' load with (tests put a fake here)


def cpu_limits(torch_default: Optional[int] = None) -> dict:
    """{what limits the CPUs: how many}: affinity, cgroup quota (when set), torch's default."""
    limits = {"affinity": affinity_cpus()}
    quota = cgroup_cpu_quota()
    if quota is not None:
        limits["cgroup quota"] = round(quota, 3)
    if torch_default is not None:
        limits["torch default"] = torch_default
    return limits


def cpu_limit() -> int:
    """The CPUs this process may use: affinity and cgroup CPU quota (a quota of 1.5 CPUs
    counts as 2: the second thread still gets half a CPU). No torch: data workers use it."""
    return budget_of(cpu_limits())


def budget_of(limits: dict) -> int:
    return max(1, min(math.ceil(v - 1e-9) for v in limits.values()))


def check_setting(value, where: str = "compute.threads") -> None:
    from edgekd.configtools import require, shown

    integer = isinstance(value, int) and not isinstance(value, bool)
    require(value == "auto" or (integer and 1 <= value <= MAX_THREADS),
            f"{where} must be auto or a whole number of threads in 1..{MAX_THREADS}, got {shown(value)}")


@dataclass
class ThreadChoice:
    """The run's thread count: its setting (auto or a number), the CPUs it may use, the count
    now, and every change auto made (each: stage, step, from, to, img/s per count tried)."""

    setting: object
    budget: int
    limits: dict = field(default_factory=dict)
    count: int = 1
    changes: list = field(default_factory=list)
    noted: set = field(default_factory=set)  # one-time log lines already written

    @property
    def auto(self) -> bool:
        return self.setting == "auto"

    def to_dict(self) -> dict:
        return {"setting": self.setting, "count": self.count, "limits": dict(self.limits)}


def choose(setting) -> ThreadChoice:
    """The starting choice for a run: auto -> the CPUs this process may use (cpu_limits, with
    torch's default count); a number as given."""
    check_setting(setting)
    import torch

    limits = cpu_limits(torch.get_num_threads())
    budget = budget_of(limits)
    return ThreadChoice(setting=setting, budget=budget, limits=limits,
                        count=budget if setting == "auto" else int(setting))


@dataclass(frozen=True)
class TunerHooks:
    """What a ThreadTuner reads and sets, for a test to replace: the clock its trials time steps
    with (None: `clock`), how a count is set (None: torch's), whether algorithms are
    deterministic (None: torch's setting) and the other processes' load (None: load_probe())."""

    timer: Optional[Callable[[], float]] = None
    set_threads: Optional[Callable[[int], None]] = None
    deterministic: Optional[bool] = None
    load: Optional[Callable[[], Optional[float]]] = None


class ThreadTuner:
    """compute.threads auto inside the training loop: re-measures the thread count on the
    loop's own steps (see the module docstring). The loop calls epoch_started() before each
    epoch's first batch (the time between epochs is not a step's) and step_done(images)
    after each step; finish() at the end. Inactive (every call a no-op) for a number, outside
    a run, on a GPU, with deterministic algorithms, or with one CPU to use."""

    def __init__(self, choice: Optional[ThreadChoice], *, steps_per_epoch: int, desc: str = "train",
                 log: Optional[Callable[[str], None]] = None, device_type: str = "cpu",
                 hooks: Optional[TunerHooks] = None):
        hooks = hooks or TunerHooks()
        deterministic = hooks.deterministic
        self.choice, self.desc, self.timer = choice, desc, hooks.timer or clock
        self.load = hooks.load
        self.log = log or logger.info
        self.set_threads = hooks.set_threads or _torch_set_threads
        self.interval = max(1, min(MEASURE_EVERY_EPOCHS * steps_per_epoch, MAX_STEPS_BETWEEN))
        self.changes: list = []
        self.plan: list = []  # (count, timed) for each step of the trial under way
        self.second_round = 0  # len(plan) when its first round is over
        self.rates: dict = {}  # count -> img/s of its timed steps in this trial
        self.steps, self.next_trial, self.last = 0, 0, None
        self.probe_step, self.probe_started, self.window = -1, None, []
        self.active = choice is not None and choice.auto and device_type == "cpu" and choice.budget > 1
        if self.active:
            if deterministic is None:
                import torch

                deterministic = torch.are_deterministic_algorithms_enabled()
            if deterministic:
                self.active = False
                self._note("deterministic", f"[{desc}] threads: auto keeps {choice.count} (deterministic: a "
                           "count that followed the machine's load would change the weights); "
                           "compute.threads: N fixes another")
        if choice is not None:  # a trial of an earlier fit may have ended elsewhere
            self.set_threads(choice.count)
        if self.active:  # the first check: after the first few steps
            self.load = self.load or load_probe()
            self._probe_from(0)

    def epoch_started(self, epoch: int) -> None:
        self.last = self.timer()

    def step_done(self, images: int) -> None:
        if not self.active:
            return
        now = self.timer()
        self.steps += 1
        if self.plan:
            count, timed = self.plan.pop(0)
            if timed and self.last is not None and now > self.last:
                self.rates.setdefault(count, []).append(images / (now - self.last))
            if len(self.plan) == self.second_round and self._clear_winner():
                self.plan = []  # a slow count is not tried again: under load its steps cost the most
            if not self.plan:
                self._decide()
        elif self.steps == self.probe_step:
            self.probe_started, self.window = now, []
            self.load()  # the window of the coming check starts here
        else:
            if self.probe_started is not None and self.last is not None and now > self.last:
                self.window.append(images / (now - self.last))  # the current count's rate, for a trial
            if self.steps >= self.next_trial:
                self._check_load(now)
        self.set_threads(self.plan[0][0] if self.plan else self.choice.count)
        self.last = self.timer()

    def _probe_from(self, step: int) -> None:
        """The next check is due PROBE_STEPS steps after `step`, its load read from there."""
        self.probe_step, self.next_trial, self.probe_started, self.window = step, step + PROBE_STEPS, None, []
        if step == 0:
            self.probe_started = self.timer()
            self.load()

    def _check_load(self, now: float) -> None:
        """A trial where the CPUs that other processes leave free differ from the count in use
        (all tried, where the load cannot be read); otherwise the next check later."""
        if self.probe_started is not None and now - self.probe_started < MIN_PROBE_SECONDS:
            self.next_trial = self.steps + PROBE_STEPS  # too short a window to read: wait longer
            return
        others = self.load()
        current = self.choice.count
        if others is None:
            return self._start_trial([current - 1, current + 1])
        free = self.choice.budget - others
        toward = current - 1 if current > free + FREE_MARGIN else current + 1 if current < free - FREE_MARGIN else None
        if toward is None or not 1 <= toward <= self.choice.budget:
            self._note(f"free {self.desc}", f"[{self.desc}] threads: auto keeps {current} (other processes "
                       f"use {others:.1f} of the {self.choice.budget} CPUs this process may use)")
            return self._probe_from(self.steps + self.interval - PROBE_STEPS)
        self._start_trial([toward])

    def _start_trial(self, others: list) -> None:
        """Steps at each count in turn (A B, then B A, ...): a settling step, then timed ones.
        The current count's first round is the probe window's steps, already timed."""
        current = self.choice.count
        counts = [current] + [c for c in others if 1 <= c <= self.choice.budget]
        self.rates = {current: list(self.window)} if self.window else {}
        rounds = [counts[1:] if self.window else counts]
        rounds += [counts[::-1] if r % 2 else counts for r in range(1, ROUNDS)]
        segment = [False] * SETTLE_STEPS + [True] * TIMED_STEPS
        self.plan = [(count, timed) for round_ in rounds for count in round_ for timed in segment]
        self.second_round = len(self.plan) - len(rounds[0]) * len(segment)  # steps left after round one

    def _clear_winner(self) -> bool:
        rates = sorted((statistics.median(v) for v in self.rates.values() if v), reverse=True)
        return len(rates) > 1 and rates[0] > CLEAR_WIN * rates[1]

    def _decide(self) -> None:
        current = self.choice.count
        rates = {c: statistics.median(v) for c, v in self.rates.items() if v}
        self._probe_from(self.steps + self.interval - PROBE_STEPS)
        if current not in rates:
            return
        best = max(rates, key=rates.get)
        shown = ", ".join(f"{c}: {rates[c]:,.0f} img/s" for c in sorted(rates, reverse=True))
        if best != current and rates[best] > rates[current] * MARGIN:
            change = {"stage": self.desc, "step": self.steps, "from": current, "to": best,
                      "img_per_s": {str(c): round(v, 1) for c, v in rates.items()}}
            self.choice.count = best
            self.changes.append(change)
            self.choice.changes.append(change)
            self.log(f"[{self.desc}] threads: {current} -> {best} ({shown}; CPUs this process may use: "
                     f"{self.choice.budget})")
        else:
            self._note(f"kept {self.desc}", f"[{self.desc}] threads: auto keeps {current} ({shown})")

    def finish(self) -> None:
        """Back to the chosen count (a trial the run ended in the middle of leaves it)."""
        if self.choice is not None and self.plan:
            self.plan = []
            self.set_threads(self.choice.count)

    def record(self) -> dict:
        """For the fit's compute record: {"threads": setting, count, limits, changes of this fit}."""
        if self.choice is None:
            return {}
        return {"threads": {**self.choice.to_dict(), "changes": list(self.changes)}}

    def _note(self, key: str, line: str) -> None:
        if key not in self.choice.noted:
            self.choice.noted.add(key)
            self.log(line)


def _torch_set_threads(count: int) -> None:
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
