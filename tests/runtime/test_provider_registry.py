"""The execution-provider extension point: a short name registered from outside edgekd
works with `edgekd bench --provider`, in a recipe and in --list-providers, and the
result reports it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekd.cli import main
from edgekd.errors import ConfigError
from edgekd.recipe import Recipe
from edgekd.runtime.providers import PROVIDERS, Provider

TOY_OPTIONS = {"use_arena": "1"}
FAST = ["--warmup", "0", "--runs", "3", "--min-seconds", "0", "-q"]


@pytest.fixture
def toy():
    """'toy' -> ONNX Runtime's CPU provider with provider options; unregistered afterwards."""
    PROVIDERS.register("toy", Provider("CPUExecutionProvider", hint="nothing to install", options=TOY_OPTIONS))
    yield PROVIDERS.get("toy")
    PROVIDERS.unregister("toy")


@pytest.fixture
def model(tmp_path):
    """A 1x4x4 -> 3 classes Flatten + Gemm model, built with onnx.helper."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W"], ["logits"])],
        "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "toy_model.onnx"
    onnx.save(proto, str(path))
    return path


def test_bench_with_a_registered_provider(tmp_path, model, toy, monkeypatch):
    asked = []
    session_class = ort.InferenceSession

    def spy(path, options=None, providers=None, **kwargs):
        asked.append(providers)
        return session_class(path, options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["bench", str(model), "--provider", "toy", "--json-out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["models"]
    assert row["provider"] == "toy"
    assert row["providers_used"][0] == "CPUExecutionProvider"
    assert row["fallback_nodes"] in (0, None) and row["runs"] >= 3
    # every session of the benchmark was asked for the toy's provider with its options
    assert asked and all(providers == [("CPUExecutionProvider", TOY_OPTIONS)] for providers in asked)


def test_registered_provider_in_a_recipe_and_in_the_provider_list(toy):
    assert Recipe.from_dict({"bench": {"provider": "toy"}}).bench.provider == "toy"
    with pytest.raises(ConfigError, match=r"unknown provider 'gpu' \(did you mean .*'cpu'\?\); known: cpu, cuda, .*\btoy\b"):
        Recipe.from_dict({"bench": {"provider": "gpu"}})
    result = CliRunner().invoke(main, ["bench", "--list-providers"])
    assert result.exit_code == 0, result.output
    lines = [line.split()[:3] for line in result.output.splitlines()]
    assert ["available", "toy", "CPUExecutionProvider"] in lines
    assert ["available", "cpu", "CPUExecutionProvider"] in lines


def test_unregistered_provider_is_gone(model):
    assert "toy" not in PROVIDERS
    result = CliRunner().invoke(main, ["bench", str(model), "--provider", "toy", *FAST])
    assert result.exit_code != 0 and "unknown provider 'toy'" in result.output
