"""`distill.arch: auto` in `edgekd compress` (issue 27): the candidates folder written and the
run stopped (export_only), timed by `edgekd bench --latency-table`, then the run resumed with
that table: the chosen student distilled, recorded with its candidates table, exported and
quantized; and a table for other candidates refused before the run starts."""

import json

import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.recipe import Recipe


def _recipe(tmp_path, **search):
    recipe = {
        "name": "auto",
        "data": {"limit_train": 120, "limit_test": 40, "calib_size": 32},
        "teacher": {"arch": "tinycnn", "arch_args": {"width": 8}, "epochs": 1, "batch_size": 64, "augment": False},
        # inverted blocks only: two candidates, so that the test stays short
        "distill": {"arch": "auto", "epochs": 1, "batch_size": 64,
                    "search": {"latency_ms": 1000.0, "threads": 1, "proxy_images": 32, "blocks": ["inverted"],
                               **search}},
        "quantize": {"max_drop": None},
        "bench": {"warmup": 1, "runs": 5, "min_seconds": 0.0, "threads": 1},
    }
    path = tmp_path / f"recipe{len(list(tmp_path.glob('recipe*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_auto_needs_a_budget_and_no_arch_args():
    with pytest.raises(Exception, match="set distill.search.latency_ms, speedup or as_fast_as"):
        Recipe.from_dict({"distill": {"arch": "auto"}})
    with pytest.raises(Exception, match="remove distill.arch_args"):
        Recipe.from_dict({"distill": {"arch": "auto", "arch_args": {"width": 8}, "search": {"speedup": 2}}})


@pytest.mark.slow  # two compress runs and a bench (about 35 s on 2 shared cores)
def test_export_only_then_device_table_then_resume(tmp_path):
    runner, run_dir = CliRunner(), tmp_path / "run"
    first = runner.invoke(main, ["compress", str(_recipe(tmp_path, export_only=True)), "--out", str(run_dir)])
    assert first.exit_code == 0, first.output
    folder = run_dir / "search-candidates"
    assert f"edgekd bench {folder} --latency-table table.json" in first.output
    assert not (run_dir / "student.safetensors").exists()

    table = tmp_path / "table.json"
    timed = runner.invoke(main, ["bench", str(folder), "--latency-table", str(table), "--threads", "1"])
    assert timed.exit_code == 0, timed.output

    assert "edgekd compress --resume RUN_DIR --set distill.search.latency_table=table.json" in first.output
    resumed = runner.invoke(main, ["compress", "--resume", str(run_dir), "--set",
                                   f"distill.search.latency_table={table}", "--set",
                                   "distill.search.export_only=false"])
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((run_dir / "report.json").read_text())
    distill = report["stages"]["distill"]
    search = distill["search"]
    assert distill["arch"] == search["winner"]["arch"] == "edgenet"
    assert distill["arch_args"] == search["winner"]["arch_args"]
    assert sum(row["chosen"] for row in search["candidates"]) == 1 and "latency table" in search["timings"]
    assert (run_dir / "model.int8.onnx").is_file()
    assert "were exported by this run already: reused" in resumed.output  # the very models the device timed
    md = (run_dir / "report.md").read_text()
    assert "## Student search (distill.arch: auto)" in md and "| yes |" in md
    assert (run_dir / "search.png").is_file()
    # the run's student exports again later: `edgekd export` finds the chosen architecture in the run
    exported = runner.invoke(main, ["export", "--onnx", str(run_dir), "-o", str(tmp_path / "again.onnx")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "again.onnx").is_file()


def test_a_table_for_other_candidates_is_refused_before_the_run(tmp_path):
    from edgekd.search.table import SCHEMA

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"schema": SCHEMA, "opset": 17, "input_shape": [1, 28, 28],
                                 "candidates": [{"id": "0" * 16, "int8_p50_ms": 0.1}]}))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(_recipe(tmp_path, latency_table=str(table))), "--out",
                                       str(run_dir)])
    assert result.exit_code == 2 and "was made for other candidates" in result.output
    assert not run_dir.exists()


def test_an_unknown_as_fast_as_architecture_is_refused_before_the_run(tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(_recipe(tmp_path, as_fast_as="resnet88")), "--out",
                                       str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "distill.search.as_fast_as: unknown architecture 'resnet88'" in result.output
    assert "did you mean 'resnet8'" in result.output and "Traceback" not in result.output
    assert not run_dir.exists()
