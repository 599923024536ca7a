"""Plugin execution providers (onnxruntime-ep-* packages): discovery, registration, the
device route (SessionOptions.add_provider_for_devices) with node placement and fallbacks,
and with onnxruntime-ep-openvino installed, `edgekd bench RUN_DIR --provider cpu,openvino`.

The device route is tested everywhere through ONNX Runtime's own CPU device (a plugin
package that brings CPUExecutionProvider, faked). OpenVINO's plugin offers Intel hardware
only: on another CPU its tests check the one-line "no device" error instead of a run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import onnxruntime as ort
import pytest
from click.testing import CliRunner
from test_bench import conv_net
from test_provider_control import FAST, refused_net, run_dir  # noqa: F401 - run_dir is a fixture

from edgekd.cli import main
from edgekd.errors import ProviderUnavailable
from edgekd.runtime import plugins, providers, session
from edgekd.runtime.plugins import PluginPackage, PluginState, add_plugin_provider

HAS_OPENVINO_PLUGIN = importlib.util.find_spec("onnxruntime_ep_openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO_PLUGIN,
                                    reason="onnxruntime-ep-openvino is not installed (pip install 'edgekd[openvino]')")


def _cli(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def _cpu_devices():
    return [d for d in ort.get_ep_devices() if d.ep_name == "CPUExecutionProvider"]


@pytest.fixture
def fake_plugin(monkeypatch):
    """CPUExecutionProvider as if only a plugin package brought it: make_session takes the
    plugin route (register, pick a device, add_provider_for_devices) with ORT's CPU device."""
    state = PluginState(PluginPackage("onnxruntime-ep-fake", "0.1", "fake"), ["CPUExecutionProvider"],
                        {"CPUExecutionProvider": _cpu_devices()})
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider"])
    monkeypatch.setattr(session, "plugin_for_ep", lambda ep: state if ep == "CPUExecutionProvider" else None)
    return state


def test_import_reads_no_distribution_and_loads_no_onnxruntime():
    code = ("import sys, importlib.metadata as md\n"
            "calls = []\n"
            "md.distributions = lambda *a, **k: calls.append(1) or []\n"
            "import edgekd.runtime.plugins, edgekd.runtime.providers, edgekd.runtime.config\n"
            "assert not calls and 'onnxruntime' not in sys.modules, (calls, 'onnxruntime' in sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_device_route_runs_and_picks_the_device():
    state = PluginState(PluginPackage("onnxruntime-ep-fake", "0.1", "fake"), ["CPUExecutionProvider"],
                        {"CPUExecutionProvider": _cpu_devices()})
    options = ort.SessionOptions()
    described = add_plugin_provider(options, state, "CPUExecutionProvider", {"device_type": "cpu"})
    assert described.startswith("CPU (")
    with pytest.raises(ProviderUnavailable, match="has no device 'NPU' here; it offers: CPU"):
        add_plugin_provider(ort.SessionOptions(), state, "CPUExecutionProvider", {"device_type": "NPU"})
    empty = PluginState(state.package, ["CPUExecutionProvider"], {"CPUExecutionProvider": []})
    with pytest.raises(ProviderUnavailable, match="onnxruntime-ep-fake 0.1 brings CPUExecutionProvider but offers no "
                                                  "device on this machine"):
        add_plugin_provider(ort.SessionOptions(), empty, "CPUExecutionProvider", {})


def test_bench_through_a_plugin_reports_route_placement_and_fallbacks(tmp_path, fake_plugin):
    model = conv_net(tmp_path / "m.onnx")
    result = _cli(model, "--json", *FAST)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["models"]
    assert row["provider_route"] == {"kind": "plugin", "package": "onnxruntime-ep-fake 0.1",
                                     "device": plugins.describe_device(_cpu_devices()[0])}
    assert row["providers_used"][0] == "CPUExecutionProvider"
    assert sum(row["provider_nodes"].values()) >= 1 and row["fallback_nodes"] == 0
    assert "cpu: plugin onnxruntime-ep-fake 0.1 on CPU" in _cli(model, *FAST).output


def test_a_plugin_without_a_device_is_one_line_before_any_model(tmp_path, monkeypatch):
    state = PluginState(PluginPackage("onnxruntime-ep-fake", "0.1", "fake"), ["CPUExecutionProvider"],
                        {"CPUExecutionProvider": []})
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider"])
    monkeypatch.setattr(session, "plugin_for_ep", lambda ep: state)
    result = _cli(conv_net(tmp_path / "m.onnx"), *FAST)
    assert result.exit_code == 2 and "offers no device on this machine" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plugin_packages_are_found_by_their_distribution_name(monkeypatch):
    class Dist:
        def __init__(self, name, top_level=None, files=()):
            self.metadata, self.version, self._top, self.files = {"Name": name}, "1.0", top_level, list(files)

        def read_text(self, name):
            return self._top

    fakes = [Dist("onnxruntime-ep-contoso", "contoso_ep\n"), Dist("onnxruntime_ep_Folder", None, ["ep_folder/__init__.py"]),
             Dist("onnxruntime-ep-meta"), Dist("numpy", "numpy")]  # a meta-package has no module
    monkeypatch.setattr(plugins.importlib.metadata, "distributions", lambda: fakes)
    plugins.plugin_packages.cache_clear()
    try:
        found = plugins.plugin_packages()
        assert [(p.distribution, p.module, p.short) for p in found] == [
            ("onnxruntime-ep-contoso", "contoso_ep", "contoso"), ("onnxruntime-ep-folder", "ep_folder", "folder")]
        state = plugins.register(found[0])  # no such module: an error kept for the listing, not raised
        assert state.error and not state.ep_names
    finally:
        plugins.plugin_packages.cache_clear()


# -- onnxruntime-ep-openvino ---------------------------------------------------------------


def _openvino_state():
    package = next(p for p in plugins.plugin_packages() if p.distribution == "onnxruntime-ep-openvino")
    return plugins.register(package)


def _openvino_devices():
    return _openvino_state().devices.get("OpenVINOExecutionProvider", []) if HAS_OPENVINO_PLUGIN else []


@needs_openvino
def test_openvino_plugin_registers_and_is_listed():
    state = _openvino_state()
    assert state.error is None and state.ep_names == ["OpenVINOExecutionProvider"]
    assert plugins.register(state.package).ep_names == state.ep_names  # a second registration is a no-op
    assert providers.resolve_provider("openvino") == "OpenVINOExecutionProvider"
    (entry,) = [e for e in providers.provider_list() if e["short"] == "openvino"]
    assert entry["kind"] == "plugin" and entry["package"].startswith("onnxruntime-ep-openvino ")
    assert entry["available"] == bool(state.devices["OpenVINOExecutionProvider"])
    (line,) = [ln for ln in _cli("--list-providers").output.splitlines() if " OpenVINOExecutionProvider " in ln]
    assert "[plugin: onnxruntime-ep-openvino " in line and line.split()[0] in ("available", "no")


@needs_openvino
@pytest.mark.skipif(bool(_openvino_devices()), reason="the OpenVINO plugin has a device here: the run is tested")
def test_openvino_plugin_without_a_device_is_one_line_exit_2(run_dir):  # noqa: F811
    result = _cli(run_dir, "--provider", "cpu,openvino", *FAST)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "onnxruntime-ep-openvino" in result.output and "offers no device on this machine" in result.output
    report = json.loads(_cli(run_dir, "--provider", "all", "--json", *FAST).output)
    assert any(s.startswith("openvino (onnxruntime-ep-openvino") for s in report["providers_skipped"])


@needs_openvino
@pytest.mark.skipif(not _openvino_devices(), reason="onnxruntime-ep-openvino offers no device on this machine "
                                                    "(it supports Intel CPUs, GPUs and NPUs only)")
def test_bench_run_dir_on_cpu_and_openvino(run_dir, tmp_path):  # noqa: F811
    """Both providers interleaved, per-provider accuracy, placement and fallbacks; a model
    OpenVINO cannot run is a failed result, not an abort."""
    refused = refused_net(tmp_path / "refused.onnx")
    models = [run_dir / "model.fp32.onnx", run_dir / "model.int8.onnx", refused]
    result = _cli(*models, "--data", run_dir / "eval.npz", "--provider", "cpu,openvino", "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {(m["name"], m["provider"]): m for m in report["models"]}
    assert set(rows) == {(n, p) for n in ("model.fp32", "model.int8") for p in ("cpu", "openvino")}
    for (_name, provider), m in rows.items():
        assert m["top1"] is not None and any("timed interleaved" in n for n in m["notes"])
        assert m["fallback_nodes"] is not None and m["provider_nodes"]
        if provider == "openvino":
            assert m["provider_route"]["kind"] == "plugin" and "OpenVINOExecutionProvider" in m["provider_nodes"]
    assert {(f["name"], f["provider"]) for f in report["failed"]} == {("refused", "cpu"), ("refused", "openvino")}
    assert all(f["message"] for f in report["failed"])
    assert {e["model"] for e in report["provider_ranking"]} == {"model.fp32", "model.int8", "refused"}
