"""Issue 26, typed plumbing of export, latency pruning, the budget search and the runtime: no
function takes more than 8 parameters, and `edgekd export` / edgekd.export build one
ExportRequest instead of forwarding their flags by hand."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from edgekd import api
from edgekd.cli.export import export as export_command
from edgekd.onnx_export import ExportConfig
from edgekd.pipeline.export_command import ExportRequest

MAX_PARAMETERS = 8

GROUPED = [  # (module, function or Class.method): each took 9 to 21 parameters before
    ("edgekd.pipeline.export_command", "export_one"),
    ("edgekd.prune.latency", "prune_to_latency"),
    ("edgekd.prune.latency", "interleaved_p50_ms"),
    ("edgekd.quant.budget", "search"),
    ("edgekd.pipeline.stages.quantize", "_quantize_budget"),
    ("edgekd.runtime.session", "make_session"),
    ("edgekd.runtime.session", "optimized_op_counts"),
    ("edgekd.runtime.bench", "bench"),
    ("edgekd.runtime.bench", "bench_run_dir"),
    ("edgekd.runtime.result", "finish_row"),
    ("edgekd.onnx_export", "to_onnx"),
    ("edgekd.train.threads", "ThreadTuner.__init__"),
]


@pytest.mark.parametrize("module, name", GROUPED)
def test_no_function_takes_more_than_eight_parameters(module, name):
    function = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    parameters = inspect.signature(function).parameters
    assert len(parameters) <= MAX_PARAMETERS, f"{module}.{name} takes {len(parameters)}: {', '.join(parameters)}"
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values()), f"{module}.{name} forwards **kwargs"


def test_export_request_mirrors_the_api_and_the_flags():
    fields = [f.name for f in dataclasses.fields(ExportRequest)]
    assert list(inspect.signature(api.export).parameters) == fields  # same names, same order
    flags = set(inspect.signature(export_command.callback.__wrapped__).parameters)
    # --data's value is data_name on the command line; progress is --quiet's opposite
    assert set(fields) - flags == {"data", "progress"} and {"data_name", "quiet"} <= flags
    # data None: the weights' own shape decides (DataConfig.name when it is that dataset's)
    assert ExportRequest().data is None and ExportRequest().opset == ExportConfig.opset


def test_export_request_from_arguments():
    request = ExportRequest.from_arguments({"run_dir": "runs/x", "data": None, "opset": None, "quiet": True,
                                            "to_onnx": True}, int8=True)
    assert request == ExportRequest(run_dir="runs/x", int8=True)  # None: the dataclasses' defaults
    assert ExportRequest.from_arguments({"opset": 13, "data": "npz"}).opset == 13
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.int8 = False
