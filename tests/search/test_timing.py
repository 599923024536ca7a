"""edgekd.search.timing: a pair timed while the machine was busy (its reference ran slower than
in the other pairs) is timed again, and one busy in every try is a warning. ONNX Runtime's
sessions and the timer are replaced by a script of timings: what is tested is the decision."""

from __future__ import annotations

import pytest

from edgekd.search import timing


class _Session:
    def get_inputs(self):
        return [type("Input", (), {"name": "input"})()]


def scripted(monkeypatch, script: list[tuple[float, float]]) -> list[int]:
    """measure_interleaved returns, call after call, (reference ms, candidate ms) from `script`;
    returns the list that counts the calls."""
    import edgekd.runtime.measure as measure
    import edgekd.runtime.session as session

    calls = []

    def measured(timed, **_kw):
        reference, candidate = script[len(calls)]
        calls.append(1)
        return [[reference] * 10, [candidate] * 10]

    monkeypatch.setattr(session, "make_session", lambda path, target: _Session())
    monkeypatch.setattr(measure, "warm_up", lambda *a, **kw: None)
    monkeypatch.setattr(measure, "measure_interleaved", measured)
    return calls


def time_four(lines: list[str]) -> list[dict]:
    return timing.time_pairs("reference.onnx", [f"c{i}.onnx" for i in range(4)], input_shape=(1, 8, 8),
                             log=lines.append)


def test_a_pair_timed_while_the_machine_was_busy_is_timed_again(monkeypatch):
    # the third pair's reference ran 2x slower than the others': it is timed again, and the
    # second try (a quiet one) replaces the first
    calls = scripted(monkeypatch, [(1.0, 0.5), (1.0, 0.6), (2.0, 0.4), (1.0, 0.7), (1.05, 0.8)])
    lines = []
    rows = time_four(lines)
    assert len(calls) == 5
    assert rows[2]["reference_p50_ms"] == pytest.approx(1.05) and rows[2]["p50_ms"] == pytest.approx(0.8)
    assert [r["p50_ms"] for r in rows[:2] + rows[3:]] == pytest.approx([0.5, 0.6, 0.7])
    assert any("1 pair(s) timed while the machine was busy" in line and "(1 of 2)" in line for line in lines)
    assert any(line.startswith("[search] 3/4 (again, 1) c2.onnx") for line in lines)
    assert not any("warning" in line for line in lines)


def test_a_pair_busy_in_every_try_keeps_its_quietest_and_is_a_warning(monkeypatch):
    calls = scripted(monkeypatch, [(1.0, 0.5), (1.0, 0.6), (2.0, 0.4), (1.0, 0.7), (1.8, 0.45), (2.2, 0.3)])
    lines = []
    rows = time_four(lines)
    assert len(calls) == 4 + timing.RETIMES
    assert rows[2]["reference_p50_ms"] == pytest.approx(1.8) and rows[2]["p50_ms"] == pytest.approx(0.45)
    warning = [line for line in lines if "warning" in line]
    assert len(warning) == 1 and "c2.onnx" in warning[0] and "quiet machine" in warning[0]


def test_quiet_pairs_are_timed_once(monkeypatch):
    # 1.15x the median is within the machine's usual spread (DISTURBED is 1.2)
    calls = scripted(monkeypatch, [(1.0, 0.5), (1.15, 0.6), (0.95, 0.4), (1.0, 0.7)])
    lines = []
    rows = time_four(lines)
    assert len(calls) == 4 and len(rows) == 4 and len(lines) == 4
