"""PyTorch -> ONNX, validated against PyTorch before the file gets its final name.

The model is exported with a dynamic batch axis, checked with onnx.checker, given
self-describing metadata (input layout, normalization, class names, stage, edgekd
version, parameters, MACs) and run in ONNX Runtime at batch sizes other than the export
example's; every output must be within atol + rtol x the magnitude of its row's PyTorch
outputs (PARITY_RTOL); the report gives the max absolute and relative differences. What
those batches hold is estimated first (check_parity_memory) and refused over the memory budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.configtools import check_number, require
from edgekd.errors import ExportMismatch
from edgekd.io.artifacts import atomic_path
from edgekd.runtime.metadata import model_entries, set_metadata
from edgekd.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn


INPUT_NAME = "input"


OUTPUT_NAME = "logits"


EXAMPLE_BATCH = 2  # deliberately not one of the default check sizes (1, 7)


# The parity gate: every output value must satisfy |onnx - torch| <= atol + rtol * scale, where
# scale is the largest |torch| output of its row (the magnitude of that sample's logits): float32
# kernels that sum in another order differ by a few ulps of the values they add up, so the error
# grows with the outputs' magnitude (a densenet121's logits of ~600 differ by ~2e-4, 3e-7 of them),
# while a wrong translation is off by far more. atol is export.atol; rtol export.rtol if the
# recipe has it, else PARITY_RTOL.
PARITY_RTOL = 1e-5


@dataclass
class ExportReport:
    path: str
    max_abs_diff: dict = field(default_factory=dict)  # batch size -> max |onnx - torch|
    seconds: float = 0.0
    # batch size -> max |onnx - torch| / (largest |torch| of the row), the error relative to the outputs' magnitude
    max_rel_diff: dict = field(default_factory=dict)
    atol: float = 0.0
    rtol: float = PARITY_RTOL


def model_metadata(*, stage: str, arch: str, spec, params: int, macs: int) -> dict[str, str]:
    """The metadata_props (runtime/metadata.py: model_entries) that let `edgekd bench` run a
    model with nothing but the file; `edgekd.preprocess` holds every step from a decoded image
    to the input (colour, resize of the shorter side, center crop, scaling, mean, std), which
    edgekd.runtime.inputs repeats."""
    from edgekd.data.preprocess import preprocess_metadata

    preprocess = preprocess_metadata(channels=spec.channels, height=spec.height, width=spec.width,
                                     resize=getattr(spec, "resize", None), mean=spec.mean, std=spec.std)
    return model_entries(version=__version__, stage=stage, arch=arch, spec=spec, preprocess=preprocess,
                         params=params, macs=macs)


@dataclass(frozen=True)
class OnnxForm:
    """The form of the exported graph. fp16: a float16 model (for GPU providers), its input
    and output float16 too unless fp32_io; it is checked against the fp32 PyTorch model with
    fp16's tolerance (FP16_ATOL, FP16_RTOL). dynamic_hw: height and width are dynamic axes
    as the batch is."""

    fp16: bool = False
    fp32_io: bool = False
    dynamic_hw: bool = False


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    metadata: dict[str, str],
    cfg: ExportConfig,
    check_inputs: torch.Tensor | None = None,
    form: OnnxForm = OnnxForm(),
) -> ExportReport:
    """Export `model` (eval mode) to `path` in `form` (float32 with a dynamic batch axis by
    default) and validate it; returns the parity report.

    `check_inputs` are real samples used for the parity check (random ones otherwise).
    """
    import copy

    import onnx
    import torch

    start = time.perf_counter()
    fp16, fp32_io, dynamic_hw = form.fp16, form.fp32_io, form.dynamic_hw
    from edgekd.models.blocks import deployed

    reference = deployed(model.eval())  # RepConv branches fused: the graph has one convolution each
    model = Float16(copy.deepcopy(reference), fp32_io) if fp16 else reference
    example = torch.zeros(EXAMPLE_BATCH, *input_shape, dtype=torch.float16 if fp16 and not fp32_io else torch.float32)
    if fp16:
        cfg = dataclasses.replace(cfg, atol=max(cfg.atol, FP16_ATOL), rtol=max(parity_tolerances(cfg)[1], FP16_RTOL))
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
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
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}},
                opset_version=cfg.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        set_metadata(proto, metadata)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        atol, rtol = parity_tolerances(cfg)
        report = ExportReport(path=str(path), atol=atol, rtol=rtol)
        checks = parity_check(reference, tmp, input_shape, cfg, check_inputs)
        report.max_abs_diff = {b: c["max_abs_diff"] for b, c in checks.items()}
        report.max_rel_diff = {b: c["max_rel_diff"] for b, c in checks.items()}
        batch, worst = max(checks.items(), key=lambda item: _nan_last(item[1]["excess"]))
        if not worst["excess"] <= 1.0:  # written so that NaN fails too
            raise ExportMismatch(
                f"ONNX output differs from PyTorch by {worst['max_abs_diff']:.3g} (> atol {atol:g}) at batch {batch}, "
                f"{worst['max_rel_diff']:.3g} of the outputs' magnitude (> rtol {rtol:g}) for {path}; "
                + ("PyTorch's own outputs are NaN or infinite: check the weights and inputs"
                   if not worst["torch_finite"] else "the model may use an operator the exporter mistranslates")
            )
    report.seconds = time.perf_counter() - start
    return report


# ONNX Runtime runs the parity batches after PyTorch, and its arena, grown in powers of two,
# keeps up to about as much again
PARITY_MEMORY_FACTOR = 2
ASSUMED_ACTIVATIONS = 16  # x the input, for a model that cannot be measured at the data's size


def check_parity_memory(model: nn.Module, input_shape, probe_shape, cfg: ExportConfig, hint: str) -> None:
    """ConfigError (exit 2) before the export's forwards (the MACs count, the trace, the parity
    batches) when the largest of them at `input_shape` would not fit the memory budget:
    measured at `probe_shape`, the data's size (edgekd.models.activations), then scaled."""
    from edgekd.errors import ConfigError
    from edgekd.io.membudget import check_memory
    from edgekd.models.activations import forward_bytes

    batch = max([EXAMPLE_BATCH, *cfg.check_batch_sizes])
    try:
        forward = forward_bytes(model, input_shape, probe_shape, batch)
    except Exception:  # noqa: BLE001 - a model that takes only the export's size (a head fixed to it)
        forward = batch * ASSUMED_ACTIVATIONS * 4 * math.prod(int(d) for d in input_shape)
    need = PARITY_MEMORY_FACTOR * forward
    dims = "x".join(str(int(d)) for d in input_shape)
    check_memory(need, f"exporting at {dims} (a forward of {batch} samples in PyTorch, then in ONNX Runtime, "
                 "for the parity check)", hint, error=ConfigError)


FP16_ATOL = 1e-2  # fp16 keeps about 3 significant digits: logits agree to about 1e-2 of their size
FP16_RTOL = 1e-2


def Float16(model, fp32_io: bool):  # noqa: N802  (builds a module; torch is imported only when exporting)
    """`model` in float16; with fp32_io its input is cast to float16 and its logits back to float32."""
    import torch

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.half()

        def forward(self, x):
            return self.model(x.half()).float() if fp32_io else self.model(x)

    return Half().eval()


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def parity_tolerances(cfg) -> tuple:
    """(atol, rtol) of the parity gate: export.atol, and export.rtol where the config has
    one (else PARITY_RTOL). Both must be finite and >= 0 (ExportMismatch's caller sees a
    ConfigError otherwise), so that no setting turns the gate off."""
    atol, rtol = cfg.atol, getattr(cfg, "rtol", PARITY_RTOL)
    for name, value in (("export.atol", atol), ("export.rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            from edgekd.errors import ConfigError

            raise ConfigError(f"{name} must be a finite number >= 0, got {str(value)[:40]}")
    return float(atol), float(rtol)


def parity_diff(onnx_out: np.ndarray, torch_out: np.ndarray, atol: float, rtol: float) -> dict:
    """How far `onnx_out` is from `torch_out` (same shape, one row per sample): max_abs_diff,
    max_rel_diff (|diff| over the largest |torch| of its row), and excess, the largest
    |diff| / (atol + rtol * that magnitude): the gate passes when excess <= 1 (NaN fails)."""
    got = np.asarray(onnx_out, dtype=np.float64).reshape(len(onnx_out), -1)
    expected = np.asarray(torch_out, dtype=np.float64).reshape(len(torch_out), -1)
    diff = np.abs(got - expected)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scale = np.max(np.abs(expected), axis=1, keepdims=True) if expected.size else np.zeros((len(expected), 1))
        rel = np.where(diff == 0, 0.0, diff / scale)
        excess = np.where(diff == 0, 0.0, diff / (atol + rtol * scale))
    if diff.size == 0:
        return {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "excess": 0.0, "torch_finite": True}
    nan = math.nan
    return {
        "max_abs_diff": nan if np.isnan(diff).any() else float(diff.max()),
        "max_rel_diff": nan if np.isnan(rel).any() else float(rel.max()),
        "excess": nan if np.isnan(excess).any() else float(excess.max()),
        "torch_finite": bool(np.isfinite(expected).all()),
    }


def parity(*args, **kwargs) -> dict[int, float]:
    """Max absolute difference between ONNX Runtime and PyTorch at each check batch size;
    the arguments are parity_check's, which also has the relative difference and the verdict."""
    return {b: c["max_abs_diff"] for b, c in parity_check(*args, **kwargs).items()}


def parity_check(
    model: nn.Module,
    onnx_path: str | Path,
    input_shape: tuple[int, int, int],
    cfg: ExportConfig,
    check_inputs: torch.Tensor | None = None,
) -> dict[int, dict]:
    """ONNX Runtime vs PyTorch at each check batch size: parity_diff's dict (max_abs_diff,
    max_rel_diff, excess, torch_finite) with the gate's tolerances (parity_tolerances)."""
    from edgekd.io.onnxfile import check_onnx_file
    from edgekd.runtime.session import cpu_session

    atol, rtol = parity_tolerances(cfg)
    # to_onnx wrote this file a moment ago, inline (no external data), after a full
    # onnx.checker pass; checked again because parity_check() accepts any path and the check
    # costs milliseconds: no ONNX Runtime session in edgekd skips check_onnx_file.
    check_onnx_file(onnx_path)
    session = cpu_session(onnx_path, log_severity=3)
    import torch

    generator = torch.Generator().manual_seed(0)
    checks = {}
    for batch in cfg.check_batch_sizes:
        if check_inputs is not None and len(check_inputs) >= batch:
            x = check_inputs[:batch]
        else:
            x = torch.randn(batch, *input_shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        feed = x.numpy().astype(np.float16) if session.get_inputs()[0].type == "tensor(float16)" else x.numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: feed})
        got = got.astype(np.float32)
        if got.shape != expected.shape:  # broadcasting would hide it
            raise ExportMismatch(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        checks[batch] = parity_diff(got, expected, atol, rtol)
    return checks


MAX_OPSET = 20  # the newest opset of the TorchScript exporter (dynamo=False) of torch <= 2.14


MAX_ATOL = 100.0  # logits; finite, so that no setting turns the parity gate off (rtol scales with the outputs)


MAX_RTOL = 0.1  # 10% of the outputs' magnitude; float32 reordering differs by about 1e-6


MAX_CHECK_BATCHES, MAX_CHECK_BATCH = 16, 1024


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export; outputs are compared with PyTorch at check_batch_sizes."""

    opset: int = 17
    atol: float = 1e-4
    rtol: float = PARITY_RTOL  # parity: |onnx - torch| <= atol + rtol x the row's largest |torch| output
    check_batch_sizes: list = field(default_factory=lambda: [1, 7])

    def __post_init__(self):
        check_number(self.opset, "export.opset", high=MAX_OPSET, integer=True)
        require(self.opset >= 13, "export.opset must be >= 13 (per-channel QDQ needs it)")
        check_number(self.atol, "export.atol", high=MAX_ATOL)
        require(self.atol > 0, "export.atol must be positive")
        check_number(self.rtol, "export.rtol", high=MAX_RTOL)
        require(self.rtol >= 0, f"export.rtol must be >= 0, got {self.rtol}")
        require(
            isinstance(self.check_batch_sizes, list) and 0 < len(self.check_batch_sizes) <= MAX_CHECK_BATCHES
            and all(isinstance(b, int) and not isinstance(b, bool) and 0 < b <= MAX_CHECK_BATCH
                    for b in self.check_batch_sizes),
            f"export.check_batch_sizes must be a list of positive integers (at most {MAX_CHECK_BATCHES} of them, "
            f"each at most {MAX_CHECK_BATCH})",
        )
