"""TODO docstring (quantize -> quant.calibration)"""

from __future__ import annotations

import numpy as np


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
