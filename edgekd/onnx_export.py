"""PyTorch -> ONNX, validated against PyTorch before the file gets its final name.

The model is exported with a dynamic batch axis, checked with onnx.checker, given
self-describing metadata (input layout, normalization, class names, stage, edgekd
version, parameters, MACs) and run in ONNX Runtime at batch sizes other than the export
example's; the maximum absolute difference from PyTorch must stay within `atol`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd import __version__
from edgekd.configtools import require
from edgekd.errors import ExportMismatch
from edgekd.io.artifacts import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn


INPUT_NAME = "input"


OUTPUT_NAME = "logits"


EXAMPLE_BATCH = 2  # deliberately not one of the default check sizes (1, 7)


@dataclass
class ExportReport:
    path: str
    max_abs_diff: dict = field(default_factory=dict)  # batch size -> max |onnx - torch|
    seconds: float = 0.0


def model_metadata(*, stage: str, arch: str, spec, params: int, macs: int) -> dict[str, str]:
    """The metadata_props that let `edgekd bench` run a model with nothing but the file."""
    return {
        "edgekd.version": __version__,
        "edgekd.stage": stage,
        "edgekd.arch": arch,
        "edgekd.input_layout": "NCHW",
        "edgekd.input_shape": json.dumps([spec.channels, spec.height, spec.width]),
        "edgekd.mean": json.dumps(list(spec.mean)),
        "edgekd.std": json.dumps(list(spec.std)),
        "edgekd.class_names": json.dumps(list(spec.class_names)),
        "edgekd.params": str(params),
        "edgekd.macs": str(macs),
    }


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    metadata: dict[str, str],
    cfg: ExportConfig,
    check_inputs: torch.Tensor | None = None,
) -> ExportReport:
    """Export `model` (eval mode) to `path` and validate it; returns the parity report.

    `check_inputs` are real samples used for the parity check (random ones otherwise).
    """
    import onnx
    import torch

    start = time.perf_counter()
    model = model.eval()
    example = torch.zeros(EXAMPLE_BATCH, *input_shape)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of dynamo, but it is
            # 40x faster here and emits GlobalAveragePool, which quantizes to int8
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=cfg.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        set_metadata(proto, metadata)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        report = ExportReport(path=str(path))
        report.max_abs_diff = parity(model, tmp, input_shape, cfg, check_inputs)
        worst = max(report.max_abs_diff.values(), key=lambda d: math.inf if math.isnan(d) else d)
        if not worst <= cfg.atol:  # written so that NaN fails too
            raise ExportMismatch(
                f"ONNX output differs from PyTorch by {worst:.3g} (> atol {cfg.atol:g}) for {path}; "
                "the model may use an operator the exporter mistranslates"
            )
    report.seconds = time.perf_counter() - start
    return report


def parity(
    model: nn.Module,
    onnx_path: str | Path,
    input_shape: tuple[int, int, int],
    cfg: ExportConfig,
    check_inputs: torch.Tensor | None = None,
) -> dict[int, float]:
    """Max absolute difference between ONNX Runtime and PyTorch at each check batch size."""
    import onnxruntime as ort

    from edgekd.io.onnxfile import check_onnx_file

    # to_onnx wrote this file a moment ago, inline (no external data), after a full
    # onnx.checker pass; checked again because parity() accepts any path and the check
    # costs milliseconds: no ONNX Runtime session in edgekd skips check_onnx_file.
    check_onnx_file(onnx_path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    import torch

    generator = torch.Generator().manual_seed(0)
    diffs = {}
    for batch in cfg.check_batch_sizes:
        if check_inputs is not None and len(check_inputs) >= batch:
            x = check_inputs[:batch]
        else:
            x = torch.randn(batch, *input_shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:  # broadcasting would hide it
            raise ExportMismatch(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        diffs[batch] = float(np.max(np.abs(got - expected)))
    return diffs


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export; outputs are compared with PyTorch at check_batch_sizes."""

    opset: int = 17
    atol: float = 1e-4
    check_batch_sizes: list = field(default_factory=lambda: [1, 7])

    def __post_init__(self):
        require(self.opset >= 13, "export.opset must be >= 13 (per-channel QDQ needs it)")
        require(self.atol > 0, "export.atol must be positive")
        require(
            len(self.check_batch_sizes) > 0 and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.check_batch_sizes),
            "export.check_batch_sizes must be a list of positive integers",
        )
