"""The student search (issue 27) driven by hand-made latency tables: the budget keeps or
drops candidates, dominated ones go, the survivors get a short distillation proxy; another
table changes the choice; a budget that none meets is refused before any training."""

import json

import pytest
import torch
from search_kit import OPSET, TINY_SPACE, hand_table

from edgekd.distill.config import DistillConfig
from edgekd.errors import ConfigError
from edgekd.search.config import SearchConfig
from edgekd.search.select import CandidateBuild, CandidatesExported, candidates_table, search_student
from edgekd.search.table import MANIFEST
from edgekd.train.plumbing import TrainData


def _tensors():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.randn(48, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()  # learnable: class shifts the mean
    return TrainData.of(x[:36], y[:36], x[36:], y[36:])


def _search(candidates_folder, tmp_path, p50s, fp32s=None, **search):
    _, manifest, teacher, spec, calib = candidates_folder
    table = tmp_path / "table.json"
    tmp_path.mkdir(parents=True, exist_ok=True)
    table.write_text(json.dumps(hand_table(manifest, p50s, fp32s=fp32s)))
    cfg = SearchConfig(latency_table=str(table), proxy_epochs=1, proxy_images=24, **search)
    lines = []
    result = search_student(teacher=teacher, data=_tensors(), distill_cfg=DistillConfig(batch_size=12), cfg=cfg,
                            folder=tmp_path / "cands", build=CandidateBuild(spec, calib, OPSET), space=TINY_SPACE,
                            log=lines.append)
    return result, lines


def test_the_table_decides_the_winner(candidates_folder, tmp_path):
    # table A: only the smallest candidate is within 1 ms
    a, _ = _search(candidates_folder, tmp_path / "a", [0.5, 3.0, 4.0], latency_ms=1.0)
    assert a.winner == TINY_SPACE[0]
    # table B, a different device: the middle one is within 1 ms and the smallest is not
    b, lines = _search(candidates_folder, tmp_path / "b", [2.0, 0.6, 4.0], latency_ms=1.0)
    assert b.winner == TINY_SPACE[1]
    rows = {r["name"]: r for r in b.rows}
    assert [r["chosen"] for r in b.rows] == [False, True, False]
    assert [r["why"] for r in b.rows][0] == "over the budget"
    assert all(r["proxy_val_top1"] is None for r in b.rows if not r["met"])
    chosen = next(r for r in rows.values() if r["chosen"])
    assert 0 <= chosen["proxy_val_top1"] <= 100 and chosen["params"] > 0 and chosen["macs"] > 0
    assert "latency table" in b.timings and any("proxy" in line for line in lines)
    assert "| yes |" in candidates_table(b.rows)


def test_dominated_candidates_get_no_proxy(candidates_folder, tmp_path):
    # the largest is also the fastest: it dominates the other two (as fast, more parameters)
    result, _ = _search(candidates_folder, tmp_path, [0.8, 0.9, 0.7], latency_ms=1.0)
    assert result.winner == TINY_SPACE[2]
    assert [r["dominated_by"] is not None for r in result.rows] == [True, True, False]
    assert [r["proxy_val_top1"] is None for r in result.rows] == [True, True, False]


def test_speedup_budget_reads_the_reference(candidates_folder, tmp_path):
    # reference (teacher) at 1.0 ms: 2x needs p50 <= 0.5 ms
    result, _ = _search(candidates_folder, tmp_path, [0.9, 0.45, 0.8], speedup=2.0)
    assert result.winner == TINY_SPACE[1] and result.rows[1]["speedup"] == pytest.approx(1 / 0.45)


def test_budget_none_meets_is_refused_before_training(candidates_folder, tmp_path, monkeypatch):
    import edgekd.distill.offline as offline

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the budget was checked")

    monkeypatch.setattr(offline, "distill", no_training)
    with pytest.raises(ConfigError) as info:
        _search(candidates_folder, tmp_path, [2.5, 1.5, 3.0], latency_ms=1.0)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert "int8 p50 1.500 ms" in message and "int8 p50 <= 1 ms" in message


def test_min_int8_speedup_keeps_the_students_that_int8_speeds_up(candidates_folder, tmp_path):
    # all three within 1 ms; the largest, which would dominate, gains only 1.5x from int8
    p50s, fp32s = [0.6, 0.5, 0.4], [1.8, 1.5, 0.6]
    plain = _search(candidates_folder, tmp_path / "a", p50s, fp32s, latency_ms=1.0)[0]
    assert plain.winner == TINY_SPACE[2]
    asked, _ = _search(candidates_folder, tmp_path / "b", p50s, fp32s, latency_ms=1.0, min_int8_speedup=2.5)
    assert asked.winner == TINY_SPACE[1]  # 3.0x, faster than the first, no longer dominated by the 1.5x one
    assert [r["met"] for r in asked.rows] == [True, True, False]
    assert asked.rows[2]["why"] == "int8 only 1.50x faster than its fp32 (min_int8_speedup)"
    assert [r["int8_over_fp32"] for r in asked.rows] == pytest.approx([3.0, 3.0, 1.5])
    assert "int8 at least 2.5x faster than the candidate's fp32" in asked.budget
    assert "| 1.50x |" in candidates_table(asked.rows)
    # none gains enough: refused before training, naming the one that gains most and the setting
    with pytest.raises(ConfigError, match=r"of the 3 fast enough, edgenet basic stem16/2 16x1 gains most from "
                                          r"int8, 3\.00x over its fp32 \(distill.search.min_int8_speedup 4\)"):
        _search(candidates_folder, tmp_path / "c", p50s, fp32s, latency_ms=1.0, min_int8_speedup=4.0)
    # a table without fp32 timings cannot answer it: refused with what to do
    with pytest.raises(ConfigError, match="has no fp32_p50_ms .* time the candidates folder again"):
        _search(candidates_folder, tmp_path / "d", p50s, latency_ms=1.0, min_int8_speedup=2.5)
    with pytest.raises(ConfigError, match="min_int8_speedup must be > 0"):
        SearchConfig(latency_ms=1.0, min_int8_speedup=0)


def test_export_only_writes_the_candidates_folder_and_stops(candidates_folder, tmp_path):
    _, manifest, teacher, spec, calib = candidates_folder
    folder = tmp_path / "cands"
    with pytest.raises(CandidatesExported) as info:
        search_student(teacher=teacher, data=_tensors(), distill_cfg=DistillConfig(),
                       cfg=SearchConfig(latency_ms=1.0, export_only=True), folder=folder,
                       build=CandidateBuild(spec, calib, OPSET), space=TINY_SPACE[:1])
    assert info.value.exit_code == 0 and f"edgekd bench {folder} --latency-table" in str(info.value)
    written = json.loads((folder / MANIFEST).read_text())
    assert [e["id"] for e in written["candidates"]] == [manifest["candidates"][0]["id"]]
    assert (folder / written["candidates"][0]["int8"]).is_file() and (folder / "reference.int8.onnx").is_file()


def test_no_budget_is_refused():
    with pytest.raises(ConfigError, match="needs a budget"):
        search_student(teacher=None, data=None, distill_cfg=None, cfg=SearchConfig(), folder=None,
                       build=CandidateBuild(None, None, OPSET))


def test_a_budget_every_candidate_meets_by_far_widens_the_space(candidates_folder, tmp_path, monkeypatch):
    import edgekd.search.select as select
    from edgekd.models.cost import count_params
    from edgekd.models.zoo import build_model
    from edgekd.search.space import family_space

    _, _, teacher, spec, calib = candidates_folder

    def timed_by_size(manifest, folder, **kwargs):  # a device on which latency follows the parameter count
        return hand_table(manifest, [e["params"] / 1e6 for e in manifest["candidates"]])

    def params(level):
        return [count_params(build_model(c["arch"], in_channels=1, num_classes=3, **c["arch_args"]))
                for c in family_space(level, ["inverted"])]

    monkeypatch.setattr(select, "latency_table", timed_by_size)
    budget_ms = 2.2 * max(params(0)) / 1e6  # level 0 is far below it (under half), level 1 is not
    assert budget_ms < 2 * max(params(1)) / 1e6
    lines = []
    result = search_student(teacher=teacher, data=_tensors(), distill_cfg=DistillConfig(batch_size=12),
                            folder=tmp_path / "cands", build=CandidateBuild(spec, calib, OPSET),
                            cfg=SearchConfig(latency_ms=budget_ms, blocks=["inverted"], proxy_images=24),
                            log=lines.append)
    assert any("by far: widening the space (level 1" in line for line in lines)
    assert not any("level 2" in line for line in lines)
    # the widened space keeps the first level's candidates: both levels are in the table
    assert [r["arch_args"] for r in result.rows] == [c["arch_args"] for k in (0, 1) for c in family_space(k, ["inverted"])]
    # level 1 is over the budget here: the winner is one of level 0's, which still met it
    assert [r["met"] for r in result.rows] == [True, True, False, False]
    assert result.winner in family_space(0, ["inverted"])


def test_without_a_table_the_candidates_are_timed_here(candidates_folder, tmp_path):
    _, _, teacher, spec, calib = candidates_folder
    folder = tmp_path / "cands"
    result = search_student(teacher=teacher, data=_tensors(), distill_cfg=DistillConfig(batch_size=12), folder=folder,
                            build=CandidateBuild(spec, calib, OPSET), space=TINY_SPACE[:2],
                            cfg=SearchConfig(latency_ms=1000.0, threads=1, proxy_images=24))
    assert result.timings.startswith("measured here (cpu, 1 threads, batch 1")
    written = json.loads((folder / "latency-table.json").read_text())
    assert [r["id"] for r in written["candidates"]] == [r["id"] for r in result.rows]
    assert all(r["int8_p50_ms"] > 0 and r["reference_p50_ms"] > 0 for r in result.rows)
    # each candidate's fp32 model timed in the same rounds: the int8 speed-up over it is in the table
    assert all(r["fp32_p50_ms"] > 0 for r in written["candidates"])
    assert all(r["int8_over_fp32"] == pytest.approx(r["fp32_p50_ms"] / r["int8_p50_ms"]) for r in result.rows)


def _budget_device(budget_ms, p50s):
    """A device where the as_fast_as model runs at budget_ms and the candidates at p50s (teacher: 1 ms)."""
    def timed(manifest, folder, **kwargs):
        return hand_table(manifest, [budget_ms if e.get("budget") else p50s.pop(0) for e in manifest["candidates"]])
    return timed


def test_as_fast_as_times_that_model_beside_the_candidates_and_never_chooses_it(candidates_folder, tmp_path,
                                                                                 monkeypatch):
    import edgekd.search.select as select

    _, _, teacher, spec, calib = candidates_folder
    lines = []

    def search(budget_ms, p50s, folder):
        monkeypatch.setattr(select, "latency_table", _budget_device(budget_ms, list(p50s)))
        return search_student(teacher=teacher, data=_tensors(), distill_cfg=DistillConfig(batch_size=12),
                              folder=tmp_path / folder, build=CandidateBuild(spec, calib, OPSET), space=TINY_SPACE,
                              cfg=SearchConfig(as_fast_as="resnet8", proxy_images=24), log=lines.append)

    # resnet8 at 0.6 ms: only the middle candidate (0.5 ms) is as fast
    result = search(0.6, [0.9, 0.5, 0.8], "a")
    assert result.winner == TINY_SPACE[1]
    budget_row = result.rows[-1]
    assert budget_row["budget_model"] and budget_row["name"] == "resnet8" and not budget_row["chosen"]
    assert not budget_row["met"] and budget_row["proxy_val_top1"] is None
    assert "sets the budget" in budget_row["why"]
    assert [r["met"] for r in result.rows[:3]] == [False, True, False]
    assert "resnet8's int8 p50 is 0.6000 ms" in result.budget and "as fast as resnet8" in result.message
    # the same candidates on a device where resnet8 is slower: the largest one fits and wins by dominance
    slower = search(0.85, [0.9, 0.5, 0.8], "b")
    assert [r["met"] for r in slower.rows[:3]] == [False, True, True]
    # none as fast: refused before training, naming the fastest candidate (never the budget model)
    with pytest.raises(ConfigError, match=r"the fastest, edgenet basic stem16/2 16x1, runs at int8 p50 0\.700"):
        search(0.3, [0.7, 0.9, 0.8], "c")


def test_proxies_within_the_margin_go_to_the_candidate_with_more_parameters(candidates_folder, tmp_path,
                                                                             monkeypatch):
    # what a short proxy does on Fashion-MNIST: the smallest student learns fastest and leads by a little
    import edgekd.train.evaluate as evaluate
    from edgekd.models.cost import count_params
    from edgekd.models.zoo import build_model

    sizes = sorted(count_params(build_model(c["arch"], in_channels=1, num_classes=3, **c["arch_args"]))
                   for c in TINY_SPACE)
    proxies = dict(zip(sizes, (80.4, 79.2, 80.0)))  # small to large

    def search(margin, folder):
        monkeypatch.setattr(evaluate, "accuracy", lambda model, val: proxies[count_params(model)])
        return _search(candidates_folder, tmp_path / folder, [0.5, 0.6, 0.7], latency_ms=1.0, proxy_margin=margin)[0]

    kept = search(1.0, "a")
    assert kept.winner == TINY_SPACE[2]
    assert "most parameters of those within 1 points of the best proxy val top-1 (80.40%)" in kept.rows[2]["why"]
    assert "fewer parameters than" in kept.rows[0]["why"] and "lower proxy" in kept.rows[1]["why"]
    strict = search(0.0, "b")  # margin 0: the best proxy wins
    assert strict.winner == TINY_SPACE[0] and strict.rows[0]["why"].startswith("best proxy val top-1")
    with pytest.raises(ConfigError, match="proxy_margin must be >= 0"):
        SearchConfig(latency_ms=1.0, proxy_margin=-1)
