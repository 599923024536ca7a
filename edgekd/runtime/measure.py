"""How `edgekd bench` measures: the latency protocol, its statistics and low-confidence
rules, the resident-memory probe, and which execution provider ran each node.

This is the one place that times session.run: the quick medians of pruning to a latency
target (edgekd.prune.latency) and of the accuracy budget (edgekd.quant.budget) come from
interleaved_medians here too.

Needs only numpy and onnxruntime (no torch), like the rest of the bench path.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError

# Every loop here ends. A protocol asks for at most MAX_RUNS runs and MAX_SECONDS seconds of
# warm-up, and as much of timing, per result (check_protocol refuses more, and NaN, inf or
# negative values); and whatever it is given, a loop stops after max(asked, MAX_RUNS) runs or
# max(asked, MAX_SECONDS) seconds (per model, for measure_interleaved), the run under way finished.
MAX_RUNS = 1_000_000


MAX_SECONDS = 3600.0


MAX_THREADS = 1024  # intra- and inter-op threads of one benchmark session (edgekd.runtime.bench.check_sweep)


PROTOCOL_FLAGS = {"warmup": "--warmup", "runs": "--runs", "min_seconds": "--min-seconds",
                  "warmup_seconds": "--warmup-seconds"}


def check_protocol(**values) -> None:
    """ConfigError (exit 2, one line) unless each given value of the latency protocol is in
    range: warmup 0..MAX_RUNS and runs 1..MAX_RUNS (whole numbers), min_seconds and
    warmup_seconds finite numbers of seconds in 0..MAX_SECONDS."""
    for key, value in values.items():
        name = f"{key} ({PROTOCOL_FLAGS[key]})" if key in PROTOCOL_FLAGS else key
        if key.endswith("seconds"):
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and 0 <= value <= MAX_SECONDS):
                raise ConfigError(f"{name} must be a finite number of seconds from 0 to {MAX_SECONDS:g}, "
                                  f"got {str(value)[:40]}")
        else:
            low = 1 if key in ("runs", "rounds") else 0
            whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if not (whole and low <= value <= MAX_RUNS):
                raise ConfigError(f"{name} must be a whole number from {low} to {MAX_RUNS}, got {str(value)[:40]}")


def warm_up(session, feed: dict, *, warmup: int, warmup_seconds: float = 0.0) -> tuple:
    """(first_run_ms, warmup_runs): the cold first run, then untimed warm-up runs until at
    least `warmup` are done and `warmup_seconds` have passed (at most MAX_RUNS runs and
    MAX_SECONDS seconds unless more is asked, see check_protocol)."""
    check_protocol(warmup=warmup, warmup_seconds=warmup_seconds)
    run, clock = session.run, time.perf_counter
    start = clock()
    run(None, feed)
    first_run_ms = (clock() - start) * 1000.0
    warmup_runs = 0
    cap_runs, cap_seconds = max(warmup, MAX_RUNS), max(warmup_seconds, MAX_SECONDS)
    start = clock()
    while warmup_runs < warmup or clock() - start < warmup_seconds:
        if warmup_runs >= cap_runs or clock() - start >= cap_seconds:
            break
        run(None, feed)
        warmup_runs += 1
    return first_run_ms, warmup_runs


def measure_latency(session, feed: dict, *, warmup: int, runs: int, min_seconds: float,
                    warmup_seconds: float = 0.0):
    """(timings_ms, first_run_ms, warmup_runs): the cold first run, untimed warm-up runs
    until at least `warmup` are done and `warmup_seconds` have passed, then timed runs
    until at least `runs` are done and `min_seconds` have passed. Only session.run is
    inside the timed interval; the loop adds one clock read per run (see
    benchmarks/bench_overhead.py for the measured overhead against a bare loop).
    The timed loop stops at max(runs, MAX_RUNS) runs or max(min_seconds, MAX_SECONDS)
    seconds even if the other condition is not met (stopped_early says so)."""
    check_protocol(warmup=warmup, runs=runs, min_seconds=min_seconds, warmup_seconds=warmup_seconds)
    first_run_ms, warmup_runs = warm_up(session, feed, warmup=warmup, warmup_seconds=warmup_seconds)
    run, clock = session.run, time.perf_counter  # bound once: no attribute lookups per run
    timings = []
    append = timings.append
    cap_runs = max(runs, MAX_RUNS)
    start = clock()
    deadline, cap_deadline = start + min_seconds, start + max(min_seconds, MAX_SECONDS)
    t0 = clock()
    while True:
        run(None, feed)
        t1 = clock()
        append((t1 - t0) * 1000.0)
        if (len(timings) >= runs and t1 >= deadline) or len(timings) >= cap_runs or t1 >= cap_deadline:
            break
        t0 = clock()
    return timings, first_run_ms, warmup_runs


def stopped_early(timings_ms, runs: int, min_seconds: float) -> str | None:
    """A note when the timed loop stopped at a cap (MAX_RUNS, MAX_SECONDS) before it had
    `runs` runs or `min_seconds` of them; None when it had both."""
    seconds = float(np.sum(timings_ms)) / 1000.0 if len(timings_ms) else 0.0
    if len(timings_ms) < runs:
        return (f"timing stopped at the cap of {max(min_seconds, MAX_SECONDS):g} s after {len(timings_ms)} of the "
                f"{runs} runs asked for")
    if len(timings_ms) >= max(runs, MAX_RUNS) and seconds < min_seconds:
        return (f"timing stopped at the cap of {len(timings_ms)} runs after {seconds:.3g} s of the {min_seconds:g} s "
                "asked for")
    return None


# Interleaved timing: each model gets at most this many runs, or this long, per round. A
# round is then short next to the spells of a shared host (its speed changed every ~0.4 s
# on this project's VM, benchmarks/results/int8-speed-repeat.md), so every model sees them alike.
ROUND_RUNS = 20


ROUND_SECONDS = 0.05


def measure_interleaved(sessions: list, *, runs: int, min_seconds: float, round_runs: int | None = None,
                        round_seconds: float | None = None) -> list:
    """Timed runs of several warmed-up (session, feed) pairs side by side: rounds in which
    each model runs up to `round_runs` times (or `round_seconds`; by default ROUND_RUNS and
    ROUND_SECONDS), the order rotating by one each round, until every model has at least
    `runs` timed runs and `min_seconds` of them. Returns one list of timings (ms) per pair.
    A model that is done keeps running with the others, so that the last rounds do not time
    it alone. With round_seconds=math.inf every round runs each model exactly `round_runs`
    times (interleaved_medians)."""
    round_runs = ROUND_RUNS if round_runs is None else round_runs
    round_seconds = ROUND_SECONDS if round_seconds is None else round_seconds
    check_protocol(runs=runs, min_seconds=min_seconds)
    if not (isinstance(round_runs, int) and round_runs > 0 and round_seconds > 0):
        raise ConfigError(f"round_runs and round_seconds must be positive, got {round_runs}, {round_seconds}")
    clock = time.perf_counter
    timings = [[] for _ in sessions]
    spent = [0.0] * len(sessions)
    rounds = 0
    # the caps (see MAX_RUNS): per model, so the whole loop's wall time is bounded by their sum
    cap_runs, cap_deadline = max(runs, MAX_RUNS), clock() + len(sessions) * max(min_seconds, MAX_SECONDS)
    while any(len(t) < runs or s < min_seconds for t, s in zip(timings, spent)):
        if max(len(t) for t in timings) >= cap_runs or clock() >= cap_deadline:
            break
        shift = rounds % len(sessions)
        for k in [*range(shift, len(sessions)), *range(shift)]:
            (session, feed), append = sessions[k], timings[k].append
            run = session.run
            round_start = clock()
            for _ in range(round_runs):
                t0 = clock()
                run(None, feed)
                t1 = clock()
                append((t1 - t0) * 1000.0)
                spent[k] += t1 - t0
                if t1 - round_start >= round_seconds:
                    break
        rounds += 1
    return timings


def interleaved_medians(sessions: list, *, rounds: int, round_runs: int = 1, warmup: int = 0) -> list[float]:
    """Median latency (ms) of each (session, feed) pair from `rounds` rounds of
    measure_interleaved, `round_runs` runs per model each, after warm_up (the cold run and
    `warmup` runs): the quick side-by-side comparison that pruning to a latency target and
    the accuracy budget use. `edgekd bench` is the real measurement."""
    check_protocol(rounds=rounds, warmup=warmup)
    for session, feed in sessions:
        warm_up(session, feed, warmup=warmup)
    timings = measure_interleaved(sessions, runs=rounds * round_runs, min_seconds=0.0, round_runs=round_runs,
                                  round_seconds=math.inf)
    return [float(np.median(t)) for t in timings]


def latency_stats(timings_ms) -> dict:
    t = np.asarray(timings_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {
        "p50": float(p50), "p90": float(p90), "p99": float(p99),
        "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()),
    }


# A percentile needs far more runs than 1 / (1 - p) to be stable. edgekd flags a p90
# from fewer than 64 timed runs and a p99 from fewer than 662 (the query counts MLPerf
# Inference's early-stopping rule needs at least for these percentiles).
MIN_RUNS_P90 = 64


MIN_RUNS_P99 = 662


MAX_CV = 0.5  # standard deviation / mean of the timed runs


MAX_TAIL = 3.0  # p99 / p50


def low_confidence(timings_ms, stats: dict | None = None) -> list[str]:
    """Reasons not to trust a result's percentiles (empty when there are none): too few
    timed runs for p90 (< 64) or p99 (< 662), a coefficient of variation above 0.5 (a
    busy or throttling machine), or a p99 above 3x the p50 (a long tail of stalls)."""
    t = np.asarray(timings_ms, dtype=np.float64)
    stats = stats or latency_stats(t)
    reasons = []
    if len(t) < MIN_RUNS_P90:
        reasons.append(f"p90 from {len(t)} runs (needs >= {MIN_RUNS_P90})")
    if len(t) < MIN_RUNS_P99:
        reasons.append(f"p99 from {len(t)} runs (needs >= {MIN_RUNS_P99})")
    mean = float(t.mean())
    cv = float(t.std()) / mean if mean > 0 else 0.0
    if cv > MAX_CV:
        reasons.append(f"noisy: coefficient of variation {cv:.2f} > {MAX_CV}")
    return reasons + tail_reasons(stats)


def tail_reasons(stats: dict) -> list[str]:
    """The long-tail part of low_confidence, from the percentiles alone (a report without timings)."""
    if stats["p50"] > 0 and stats["p99"] > MAX_TAIL * stats["p50"]:
        return [f"long tail: p99 is {stats['p99'] / stats['p50']:.1f}x p50 (> {MAX_TAIL:g}x)"]
    return []


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class MemoryProbe:
    """Resident memory of this process around one result (Linux; None elsewhere).

    before: VmRSS just before the session is created. peak: the highest RSS from then
    on through the timed runs: the kernel's high-water mark VmHWM, reset at start by
    writing 5 to /proc/self/clear_refs; where that reset is refused, the largest of
    VmRSS samples after session creation, after the cold run and after the timed runs.
    delta = peak - before: what the session and its runs added (memory that earlier
    models freed may be reused, so it can underestimate a model measured later).
    """

    def __init__(self):
        self.before = self.peak = None
        self._hwm_reset = False

    def start(self):
        kb = _proc_status_kb("VmRSS")
        if kb is None:
            return
        self.before = self.peak = kb * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False

    def sample(self):
        kb = _proc_status_kb("VmRSS")
        if kb is not None and self.peak is not None:
            self.peak = max(self.peak, kb * 1024)

    def finish(self) -> tuple:
        """(before, peak, delta) in bytes, or Nones."""
        if self.before is None:
            return None, None, None
        self.sample()
        if self._hwm_reset:
            hwm = _proc_status_kb("VmHWM")
            if hwm is not None:
                self.peak = max(self.peak, hwm * 1024)
        return self.before, self.peak, self.peak - self.before


def provider_node_counts(profile_path) -> dict:
    """Execution provider -> number of distinct graph nodes it ran, from an ONNX Runtime
    profile (SessionOptions.enable_profiling): every kernel event (category "Node")
    carries args.provider, the provider whose kernel ran that node. The profile must
    cover at least one run. Nodes that a provider compiles into one fused node (TensorRT,
    OpenVINO) count as that one node."""
    try:
        events = json.loads(Path(profile_path).read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(events, dict):  # some versions wrap the events
        events = events.get("traceEvents", [])
    nodes = {}
    for event in events:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        args = event.get("args") or {}
        provider, name = args.get("provider"), event.get("name", "")
        if provider and name.endswith("_kernel_time"):
            nodes[name[: -len("_kernel_time")]] = provider
    return dict(Counter(nodes.values()))


def budget_text(latency_ms: float | None, speedup: float | None, *, measured: str, reference: str) -> str:
    """A latency budget in words, as the logs and errors of pruning to latency and of the
    student search state it: "int8 p50 <= 0.05 ms and >= 2x faster than the teacher's int8 model"."""
    parts = []
    if latency_ms is not None:
        parts.append(f"{measured} <= {latency_ms:g} ms")
    if speedup is not None:
        parts.append(f">= {speedup:g}x faster than {reference}")
    return " and ".join(parts)
