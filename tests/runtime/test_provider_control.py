"""Provider control in `edgekd bench`: --provider-option / --session-config /
--graph-optimization (and the recipe's bench keys), comparisons of several providers
(--provider a,b and all) with the fastest per model, interleaving by default when several
results are compared, and a model a provider cannot run as a failed result, not an abort."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from test_bench import _Calibration, conv_net

from edgekd.cli import main
from edgekd.errors import ConfigError, ProviderFailed
from edgekd.recipe import Recipe
from edgekd.runtime import bench
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.providers import PROVIDERS, Provider
from edgekd.runtime.ranking import rank_providers, ranking_lines
from edgekd.runtime.session import make_session
from edgekd.runtime.session_options import options_for, parse_pairs

FAST = ["--warmup", "0", "--runs", "3", "--min-seconds", "0", "--no-progress", "--scale", "1/255"]
CFG = BenchConfig(warmup=0, runs=3, min_seconds=0.0, preprocess={"scale": "1/255"})


def _cli(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def refused_net(path):
    """A model that passes onnx.checker but that no provider has a kernel for (an op of an
    unknown domain): ONNX Runtime refuses it when the session is created."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Mystery", ["c"], ["y"], domain="com.example")],
        "refused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(np.ones((10, 3, 8, 8), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory like edgekd's: fp32 and int8 students and eval.npz (labels: fp32's own)."""
    d = tmp_path_factory.mktemp("run")
    fp32 = conv_net(d / "model.fp32.onnx")
    x = np.random.default_rng(1).integers(0, 256, size=(16, 3, 8, 8), dtype=np.uint8)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(fp32), str(d / "model.int8.onnx"), _Calibration(x[:8].astype(np.float32) / 255),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    y = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x / np.float32(255)})[0]
    np.savez(d / "eval.npz", x=x, y=y.argmax(1))
    return d


@pytest.fixture
def cpu2():
    """'cpu2': a second name for the CPU provider, so that two providers can be compared anywhere."""
    PROVIDERS.register("cpu2", Provider("CPUExecutionProvider", hint="nothing to install"))
    yield "cpu2"
    PROVIDERS.unregister("cpu2")


# -- bad values: one line, exit 2, before anything is benched --------------------------------


@pytest.mark.parametrize("args, message", [
    (["--provider-option", "no-equals"], "--provider-option: expected KEY=VALUE"),
    (["--provider-option", "=1"], "--provider-option: expected KEY=VALUE"),
    (["--provider-option", "nosuch:key=1"], "unknown provider 'nosuch'"),
    (["--provider-option", "a b=1"], "without spaces"),
    (["--session-config", "k=1", "--session-config", "k=2"], "'k' is given twice"),
    (["--session-config", "session.intra_op.allow_spinning=0", "--intra-spinning", "on"], "give one"),
    (["--graph-optimization", "max"], "--graph-optimization must be one of disable, basic, extended, all"),
    (["--accuracy-tolerance", "nan"], "--accuracy-tolerance must be top-1 points"),
    (["--accuracy-tolerance", "-1"], "--accuracy-tolerance must be top-1 points"),
    (["--provider", "cpu,cpu"], "'cpu' is given twice"),
    (["--provider", "cpu,"], "expected a name, a comma list of names or 'all'"),
    (["--provider", "cpu,nosuch"], "unknown provider 'nosuch'"),
])
def test_bad_provider_control_is_one_line_and_exit_2(tmp_path, args, message, monkeypatch):
    model = conv_net(tmp_path / "m.onnx")
    monkeypatch.setattr(ort, "InferenceSession", None)  # nothing may be loaded before the check
    result = _cli(model, *args, *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_recipe_keys_are_validated():
    recipe = Recipe.from_dict({"bench": {"provider_options": {"openvino:device_type": "CPU", "k": "v"},
                                         "session_config": {"session.disable_prepacking": "1"},
                                         "graph_optimization": "basic"}})
    assert recipe.bench.graph_optimization == "basic" and recipe.bench.interleave is None
    for bad, message in [({"provider_options": {"k": 1}}, "must be a string"),
                         ({"provider_options": ["k=v"]}, "must be of type dict"),
                         ({"session_config": {"k\n": "1"}}, "printable"),
                         ({"graph_optimization": "max"}, "bench.graph_optimization must be one of"),
                         ({"interleave": "yes"}, "bench.interleave")]:
        with pytest.raises(ConfigError, match=message):
            Recipe.from_dict({"bench": bad})


def test_parse_pairs_and_options_for_a_provider():
    assert parse_pairs(("a=1", "b=x=y", "c="), "--f") == {"a": "1", "b": "x=y", "c": ""}
    options = {"num_of_threads": "2", "openvino:device_type": "GPU", "cpu:arena": "0"}
    assert options_for("openvino", options) == {"num_of_threads": "2", "device_type": "GPU"}
    assert options_for("cpu", options) == {"num_of_threads": "2", "arena": "0"}
    assert options_for("CPUExecutionProvider", options) == {"num_of_threads": "2", "arena": "0"}


def test_options_reach_the_session(tmp_path, monkeypatch):
    model = conv_net(tmp_path / "m.onnx")
    seen = []
    session_class = ort.InferenceSession

    def spy(path, options=None, providers=None, **kwargs):
        seen.append((options, providers))
        return session_class(path, options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    make_session(model, BenchConfig(provider_options={"use_arena": "0", "openvino:device_type": "GPU"},
                                    session_config={"session.disable_prepacking": "1"}, graph_optimization="basic"))
    options, providers = seen[-1]
    assert providers == [("CPUExecutionProvider", {"use_arena": "0"})]  # not the openvino-only one
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_graph_optimization_changes_what_runs(tmp_path):
    """--graph-optimization disable keeps Conv and Relu apart; 'all' fuses them."""
    model = conv_net(tmp_path / "m.onnx")
    reports = {level: json.loads(_cli(model, "--json", "--graph-optimization", level, *FAST).output)
               for level in ("disable", "all")}
    off, on = (reports[k]["models"][0]["op_counts"] for k in ("disable", "all"))
    assert off.get("Relu") == 1 and "Relu" not in on
    assert reports["disable"]["config"]["graph_optimization"] == "disable"


# -- a model a provider cannot run ---------------------------------------------------------


def test_a_refused_model_is_a_failed_result_and_the_others_run(tmp_path, run_dir):
    bad = refused_net(tmp_path / "refused.onnx")
    good = run_dir / "model.fp32.onnx"
    result = _cli(good, bad, "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [m["name"] for m in report["models"]] == ["model.fp32"]
    (failed,) = report["failed"]
    assert failed["name"] == "refused" and failed["provider"] == "cpu" and failed["status"] == "failed"
    assert "Mystery" in failed["message"] and "ONNX Runtime cannot load" in failed["message"]
    table = _cli(good, bad, *FAST).output
    assert any(line.split()[:3] == ["refused", "-", "cpu"] and "failed" in line for line in table.splitlines())
    assert "refused: FAILED on cpu: ONNX Runtime cannot load" in table
    # alone, it is an error as before: one line, exit 2
    alone = _cli(bad, *FAST)
    assert alone.exit_code == 2 and len(alone.output.strip().splitlines()) == 1


def test_library_bench_raises_unless_failures_are_kept(tmp_path, run_dir):
    bad = refused_net(tmp_path / "refused.onnx")
    paths = [run_dir / "model.fp32.onnx", bad]
    with pytest.raises(ProviderFailed, match="Mystery"):
        bench.bench(paths, cfg=CFG, progress=False)
    for interleave in (False, True):
        cfg = BenchConfig(warmup=0, runs=3, min_seconds=0.0, interleave=interleave)
        rows = bench.bench(paths, cfg=cfg, progress=False, keep_failures=True)
        assert [type(r).__name__ for r in rows] == ["BenchRow", "FailedRow"]


# -- comparing providers -----------------------------------------------------------------


def test_two_providers_are_interleaved_and_ranked(run_dir, cpu2):
    result = _cli(run_dir, "--provider", f"cpu,{cpu2}", "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = report["models"]
    assert [(m["name"], m["provider"]) for m in rows] == [
        ("model.fp32", "cpu"), ("model.fp32", "cpu2"), ("model.int8", "cpu"), ("model.int8", "cpu2")]
    for m in rows:
        assert m["top1"] is not None and m["provider_nodes"] and m["fallback_nodes"] is not None
        assert any("timed interleaved with 3 other result(s)" in n for n in m["notes"])
        assert m["provider_route"]["kind"] == "built-in"
    assert report["sweep"]["providers"] == ["cpu", "cpu2"] and report["config"]["interleave"] is None
    ranking = report["provider_ranking"]
    assert [e["model"] for e in ranking] == ["model.fp32", "model.int8"]
    for e in ranking:
        assert e["providers"] == ["cpu", "cpu2"] and e["fastest"]["provider"] in ("cpu", "cpu2")
        assert e["reference"]["provider"] == "cpu" and e["tolerance_points"] == 0.5
        assert e["fastest_within_tolerance"]["top1"] == e["reference"]["top1"]  # the same kernels
    table = _cli(run_dir, "--provider", f"cpu,{cpu2}", "--accuracy-tolerance", "2", *FAST).output
    assert "model.int8 (batch 1): fastest cpu" in table and "within 2 top-1 points of cpu" in table


def test_provider_all_benches_every_installed_provider(run_dir, cpu2, monkeypatch):
    from edgekd.runtime import providers

    names, skipped = providers.installed_providers()
    assert names[0] == "cpu" and cpu2 not in names  # one name per provider
    plugins = [e for e in providers.provider_list() if e["kind"] == "plugin" and not e["available"]]
    assert len(skipped) == len(plugins)  # a plugin without a device here is named, not benched
    monkeypatch.setattr(providers, "installed_providers", lambda: (["cpu", cpu2], ["openvino (pkg): no device"]))
    result = _cli(run_dir / "model.int8.onnx", "--provider", "all", "--json", *FAST)
    report = json.loads(result.output)
    assert [m["provider"] for m in report["models"]] == ["cpu", "cpu2"]
    assert report["providers_skipped"] == ["openvino (pkg): no device"] and len(report["provider_ranking"]) == 1
    table = _cli(run_dir / "model.int8.onnx", "--provider", "all", *FAST).output
    assert "skipped openvino (pkg): no device" in table


def test_interleave_is_the_default_when_several_results_are_compared(run_dir):
    one = run_dir / "model.fp32.onnx"
    cases = [([one], None, False), ([run_dir], None, True), ([one, run_dir / "model.int8.onnx"], None, True),
             ([run_dir], "--no-interleave", False), ([one], "--interleave", False)]  # alone: nothing to rotate with
    for models, flag, interleaved in cases:
        report = json.loads(_cli(*models, "--json", *([flag] if flag else []), *FAST).output)
        notes = [n for m in report["models"] for n in m["notes"]]
        assert any("timed interleaved" in n for n in notes) == interleaved, (models, flag)
    assert bench.interleaves(BenchConfig(), ["a"], ["cpu", "cpu2"]) is True
    assert bench.interleaves(BenchConfig(interleave=False), ["a", "b"], ["cpu"]) is False


def test_rank_providers_picks_the_fastest_within_the_tolerance():
    def row(provider, p50, top1, used="X"):
        return {"name": "m", "path": "m.onnx", "batch_size": 1, "threads": 0, "provider": provider,
                "latency_ms": {"p50": p50}, "top1": top1, "providers_used": [used]}

    models = [row("cpu", 2.0, 90.0, "CPUExecutionProvider"), row("openvino", 1.0, 89.0), row("tensorrt", 1.5, 89.8)]
    failed = [{"name": "m", "path": "m.onnx", "batch_size": 1, "threads": 0, "provider": "qnn", "status": "failed"}]
    (entry,) = rank_providers(models, failed, tolerance=0.5)
    assert entry["fastest"]["provider"] == "openvino" and entry["fastest_within_tolerance"]["provider"] == "tensorrt"
    assert entry["failed"] == ["qnn"] and entry["reference"] == {"provider": "cpu", "top1": 90.0}
    assert rank_providers(models, [], tolerance=1.0)[0]["fastest_within_tolerance"]["provider"] == "openvino"
    assert rank_providers(models, [], tolerance=0.0)[0]["fastest_within_tolerance"]["provider"] == "cpu"
    no_top1 = [dict(m, top1=None) for m in models]
    (entry,) = rank_providers(no_top1, [])
    assert entry["fastest_within_tolerance"] is None and "pass --data" in entry["note"]
    assert "failed on qnn" in ranking_lines(rank_providers(models, failed))[0]
    assert rank_providers(models[:1], []) == []  # one provider: nothing to rank
