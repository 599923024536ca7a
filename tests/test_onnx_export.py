"""Tests for edgekd.export: ONNX export, metadata and the parity gate against PyTorch."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgekd
from edgekd.errors import ExportMismatch, GateFailed
from edgekd.models.cost import count_macs, count_params
from edgekd.onnx_export import (
    EXAMPLE_BATCH,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportConfig,
    model_metadata,
    parity,
    set_metadata,
    to_onnx,
)

SHAPE = (1, 8, 8)
CFG = ExportConfig(check_batch_sizes=[1, 3, 5])


class FrozenBranch(nn.Module):
    """A data-dependent Python branch: traced with the all-zeros export example, the ONNX graph
    keeps the zeros branch (logits * 0) for every input, while PyTorch returns the logits."""

    def forward(self, x):
        logits = x.flatten(1)[:, :3]
        if bool((x == 0).all()):
            return logits * 0
        return logits


class FrozenNaNBranch(nn.Module):
    """As FrozenBranch, but the frozen branch makes every ONNX output NaN."""

    def forward(self, x):
        logits = x.flatten(1)[:, :3]
        if bool((x == 0).all()):
            return logits * float("nan")
        return logits


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


@pytest.fixture
def exported(tmp_path, make_tiny_cnn, tiny_spec):
    model = make_tiny_cnn()
    meta = model_metadata(stage="student", arch="tinycnn", spec=tiny_spec, params=count_params(model),
                          macs=count_macs(model, SHAPE))
    path = tmp_path / "student.onnx"
    report = to_onnx(model, path, input_shape=SHAPE, metadata=meta, cfg=CFG)
    return path, model, report


def test_export_writes_a_valid_model(exported):
    path, _model, report = exported
    assert report.path == str(path)
    onnx.checker.check_model(str(path), full_check=True)
    assert os.listdir(path.parent) == ["student.onnx"]  # no temporary file left
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    ops = [n.op_type for n in proto.graph.node]
    # 3 conv-BN-ReLU blocks: BN folded into the convs by the exporter
    assert ops.count("Conv") == 3 and ops.count("Relu") == 3 and ops.count("MaxPool") == 2
    assert "BatchNormalization" not in ops
    assert "GlobalAveragePool" in ops  # the quantizable pooling op (see export.py)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17


def test_batch_axis_is_dynamic(exported):
    path, model, _ = exported
    proto = onnx.load(str(path))
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and [d.dim_value for d in in_dims[1:]] == [1, 8, 8]
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 3
    # and ORT really runs other batch sizes than the export example (2)
    for batch in (1, 4, 9):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        got = run_onnx(path, x.numpy())
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (batch, 3)
        assert np.abs(got - expected).max() <= 1e-4


def test_metadata_is_embedded(exported):
    path, _, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    for key in ("edgekd.stage", "edgekd.mean", "edgekd.std", "edgekd.class_names", "edgekd.params", "edgekd.macs",
                "edgekd.version", "edgekd.arch", "edgekd.input_layout", "edgekd.input_shape"):
        assert key in meta, key
    assert meta["edgekd.stage"] == "student" and meta["edgekd.arch"] == "tinycnn"
    assert json.loads(meta["edgekd.mean"]) == [0.5] and json.loads(meta["edgekd.std"]) == [0.25]
    assert json.loads(meta["edgekd.class_names"]) == ["ant", "bee", "cat"]
    assert json.loads(meta["edgekd.input_shape"]) == [1, 8, 8]
    assert meta["edgekd.input_layout"] == "NCHW"
    assert meta["edgekd.version"] == edgekd.__version__
    # TinyCNN width 4 on 1x8x8: 1583 parameters and 11568 MACs (worked out in test_models.py)
    assert meta["edgekd.params"] == "1583" and meta["edgekd.macs"] == "11568"


def test_parity_report_has_every_check_batch_size(exported):
    _, _, report = exported
    assert sorted(report.max_abs_diff) == [1, 3, 5]
    assert all(0.0 <= d <= 1e-4 for d in report.max_abs_diff.values())
    assert report.seconds > 0


def test_export_example_batch_is_not_a_default_check_size():
    # parity at the example's own batch size would not exercise the dynamic axis
    assert EXAMPLE_BATCH not in ExportConfig().check_batch_sizes


def test_set_metadata_updates_and_adds():
    proto = onnx.ModelProto()
    set_metadata(proto, {"a": "1", "b": "2"})
    set_metadata(proto, {"b": "3", "c": "4"})
    assert [(p.key, p.value) for p in proto.metadata_props] == [("a", "1"), ("b", "3"), ("c", "4")]


# -- the parity gate ---------------------------------------------------------------------------------


def test_mismatch_raises_and_leaves_no_file(tmp_path):
    path = tmp_path / "frozen.onnx"
    with pytest.raises(ExportMismatch) as info:
        to_onnx(FrozenBranch(), path, input_shape=SHAPE, metadata={}, cfg=ExportConfig())
    assert isinstance(info.value, GateFailed) and info.value.exit_code == 3
    assert "(> atol 0.0001)" in str(info.value) and str(path) in str(info.value)
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # the temporary file is gone too


def test_mismatch_keeps_the_previous_good_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportMismatch):
        to_onnx(FrozenBranch(), path, input_shape=SHAPE, metadata={}, cfg=ExportConfig())
    assert path.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_check_inputs_are_used_for_parity(tmp_path):
    # all-zero check inputs take the same branch as the export example, so they match exactly
    zeros = torch.zeros(7, *SHAPE)
    report = to_onnx(FrozenBranch(), tmp_path / "z.onnx", input_shape=SHAPE, metadata={}, cfg=ExportConfig(),
                     check_inputs=zeros)
    assert report.max_abs_diff == {1: 0.0, 7: 0.0}
    # with too few check inputs for batch 7, random ones are used there and the mismatch shows
    with pytest.raises(ExportMismatch):
        to_onnx(FrozenBranch(), tmp_path / "z3.onnx", input_shape=SHAPE, metadata={}, cfg=ExportConfig(),
                check_inputs=zeros[:3])
    assert not (tmp_path / "z3.onnx").exists()


def test_atol_is_the_gate(tmp_path):
    # logits = x[:, :3] for randn inputs: |diff| is at most max|x| over the checked inputs, well under 100
    report = to_onnx(FrozenBranch(), tmp_path / "loose.onnx", input_shape=SHAPE, metadata={},
                     cfg=ExportConfig(atol=100.0))
    assert 0.1 < max(report.max_abs_diff.values()) <= 100.0
    assert (tmp_path / "loose.onnx").is_file()


def test_parity_at_requested_batch_sizes(exported):
    path, model, _ = exported
    diffs = parity(model, path, SHAPE, ExportConfig(check_batch_sizes=[2, 6]))
    assert set(diffs) == {2, 6} and max(diffs.values()) <= 1e-4


def test_nan_output_fails_the_gate(tmp_path):
    path = tmp_path / "nan.onnx"
    with pytest.raises(ExportMismatch):
        to_onnx(FrozenNaNBranch(), path, input_shape=SHAPE, metadata={}, cfg=ExportConfig())
    assert not path.exists()


@pytest.mark.parametrize("fp32_io", [False, True])
def test_fp16_export_matches_pytorch_within_fp16_tolerance_and_runs_on_cpu(tmp_path, fp32_io):
    """The default student (TinyCNN-24 at 28x28) as a float16 model: parity against PyTorch's
    fp32 outputs within FP16_ATOL + FP16_RTOL of their size, run by the CPU provider."""
    from edgekd.models.zoo import build_model
    from edgekd.onnx_export import FP16_ATOL, FP16_RTOL, ExportConfig, OnnxForm, to_onnx

    torch.manual_seed(0)
    model = build_model("tinycnn", in_channels=1, num_classes=10, width=24).eval()
    report = to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28), metadata={}, cfg=ExportConfig(),
                     form=OnnxForm(fp16=True, fp32_io=fp32_io))
    assert report.atol >= FP16_ATOL and report.rtol >= FP16_RTOL
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    dtype = np.float32 if fp32_io else np.float16
    assert session.get_inputs()[0].type == ("tensor(float)" if fp32_io else "tensor(float16)")
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {"input": x.numpy().astype(dtype)})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.dtype == dtype
    assert np.abs(got.astype(np.float32) - expected).max() <= FP16_ATOL + FP16_RTOL * np.abs(expected).max()
    weights = [i for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)


def test_dynamic_hw_export_takes_other_sizes(tmp_path):
    from edgekd.models.zoo import build_model
    from edgekd.onnx_export import ExportConfig, OnnxForm, to_onnx

    model = build_model("tinycnn", in_channels=1, num_classes=3, width=4).eval()
    to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 16, 16), metadata={}, cfg=ExportConfig(),
            form=OnnxForm(dynamic_hw=True))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[2:] == ["height", "width"]
    x = torch.randn(2, 1, 24, 20)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.allclose(got, model(x).numpy(), atol=1e-5)
