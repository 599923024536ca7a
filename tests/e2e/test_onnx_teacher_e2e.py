"""`teacher.onnx`: the chain distills from a teacher that exists only as ONNX."""

from __future__ import annotations

import json

import pytest

TINY = {"data": {"limit_train": 400, "limit_test": 200, "calib_size": 64},
        "distill": {"epochs": 1, "arch_args": {"width": 4}}, "bench": {"runs": 5, "min_seconds": 0, "warmup": 1},
        "quantize": {"max_drop": None}}


@pytest.fixture
def onnx_teacher(tmp_path):
    import torch

    from edgekd.data.config import DataConfig
    from edgekd.data.splits import load_splits
    from edgekd.models.zoo import build_model
    from edgekd.onnx_export import ExportConfig, model_metadata, to_onnx

    spec = load_splits(DataConfig(), seed=0).spec
    torch.manual_seed(0)
    model = build_model("tinycnn", in_channels=1, num_classes=10, width=4).eval()
    path = tmp_path / "vendor.onnx"
    to_onnx(model, path, input_shape=(1, 28, 28), cfg=ExportConfig(),
            metadata=model_metadata(stage="teacher", arch="tinycnn", spec=spec, params=1, macs=1))
    return path


def test_compress_distills_from_an_onnx_teacher(tmp_path, onnx_teacher):
    import edgekd

    report = edgekd.compress({**TINY, "teacher": {"onnx": str(onnx_teacher)}}, tmp_path / "run")
    teacher = report["stages"]["teacher"]
    assert teacher["onnx"] == str(onnx_teacher) and 0 <= teacher["val_top1"] <= 100
    stages = {m["stage"] for m in report["models"]}
    assert stages == {"teacher", "student", "int8"}
    assert not (tmp_path / "run" / "teacher.safetensors").exists()  # nothing trained or saved for it
    meta = json.loads(json.dumps(report["models"][0]))
    assert meta["top1"] is not None  # benched with the data's preprocessing from the copied metadata


def test_onnx_teacher_with_feature_terms_is_refused_before_the_run(tmp_path, onnx_teacher):
    import edgekd
    from edgekd.errors import ConfigError

    recipe = {**TINY, "teacher": {"onnx": str(onnx_teacher)},
              "distill": {**TINY["distill"], "terms": [{"kind": "at", "student": "features.2", "teacher": "x"}]}}
    with pytest.raises(ConfigError, match="teacher's layers"):
        edgekd.compress(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
