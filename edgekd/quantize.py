"""Post-training static int8 quantization with ONNX Runtime's own tools, file to file.

fp32 ONNX -> ORT pre-processing (shape inference + graph optimization) -> calibration on
the calibration split -> QDQ model (per-channel int8 weights, uint8 or int8 activations).
ONNX Runtime fuses QDQ groups into int8 kernels (QLinearConv, ...) when it loads the model;
`edgekd bench` counts them to show that int8 really runs as int8.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifacts import atomic_path
from .recipe import QuantConfig


@dataclass
class QuantReport:
    path: str
    calibration: str
    samples: int
    activation_type: str
    weight_type: str
    per_channel: bool
    seconds: float


class ArrayCalibrationReader:
    """Feeds calibration images to ONNX Runtime through its CalibrationDataReader protocol
    (get_next() returns one input dict, then None when the data is exhausted)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32, progress=None):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self._position = 0

    def get_next(self):
        if self._position >= len(self.images):
            return None
        batch = self.images[self._position : self._position + self.batch_size]
        self._position += len(batch)
        if self.progress is not None:
            self.progress.update(len(batch))
        return {self.input_name: batch}

    def rewind(self):
        self._position = 0


def ptq(
    fp32_path: str | Path,
    int8_path: str | Path,
    *,
    calib_images: np.ndarray,
    cfg: QuantConfig,
    metadata: dict[str, str] | None = None,
    progress: bool = True,
) -> QuantReport:
    """Quantize `fp32_path` into `int8_path` (QDQ); `calib_images` are preprocessed float32 NCHW."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm.auto import tqdm

    from .bench import check_onnx_file
    from .export import INPUT_NAME, set_metadata

    # ORT's pre-processing and calibration open sessions on fp32_path (and onnx.load
    # reads its external data): it must pass the same check as a benched model. Usually
    # edgekd has just written it; on --resume or from the API it is whatever is on disk.
    check_onnx_file(fp32_path)
    start = time.perf_counter()
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="edgekd-ptq-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with tqdm(total=len(calib_images), desc="calibrate", unit="img", disable=not progress, leave=False) as bar:
            reader = ArrayCalibrationReader(calib_images, INPUT_NAME, progress=bar)
            with atomic_path(int8_path) as tmp:
                quantize_static(
                    str(prepared),
                    str(tmp),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=cfg.per_channel,
                    activation_type=types[cfg.activation_type],
                    weight_type=types[cfg.weight_type],
                    reduce_range=cfg.reduce_range,
                    calibrate_method=methods[cfg.calibration],
                )
                proto = onnx.load(str(tmp))
                set_metadata(proto, dict(metadata or {}))
                onnx.checker.check_model(proto, full_check=True)
                onnx.save(proto, str(tmp))
    return QuantReport(
        path=str(int8_path),
        calibration=cfg.calibration,
        samples=len(calib_images),
        activation_type=cfg.activation_type,
        weight_type=cfg.weight_type,
        per_channel=cfg.per_channel,
        seconds=time.perf_counter() - start,
    )
