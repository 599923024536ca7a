"""CALIBRATORS, the registry of int8 calibration methods (quantize.calibration), and what feeds
them: the calibration images through ONNX Runtime's data-reader protocol, and, for a method
that computes the activation ranges itself, every float activation of the model batch by batch.

An entry is a Calibrator: ONNX Runtime's own calibration (`ort_method`, a CalibrationMethod
name, with `ort_options`, quantize_static's Calib* options), or a `ranges` function that gets
the batches and returns {tensor name: (low, high)} for every name in `batches.names`;
edgekd.quant.ptq quantizes with exactly those ranges. A function registered with the
decorator is a `ranges` calibrator:

    import numpy as np
    from edgekd.quant.calibration import CALIBRATORS, Calibrator

    @CALIBRATORS.register("mean-minmax")  # each range: the batches' mean min and mean max
    def mean_minmax(batches):
        lows, highs = {n: [] for n in batches.names}, {n: [] for n in batches.names}
        for tensors in batches:  # {tensor name: float array} per calibration batch
            for name, x in tensors.items():
                lows[name].append(x.min())
                highs[name].append(x.max())
        return {n: (float(np.mean(lows[n])), float(np.mean(highs[n]))) for n in batches.names}

    CALIBRATORS.register("p99.9", Calibrator(ort_method="Percentile", ort_options={"CalibPercentile": 99.9}))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Union

import numpy as np

from edgekd.errors import ConfigError
from edgekd.registry import Registry


@dataclass(frozen=True)
class Calibrator:
    """One calibration method: exactly one of `ort_method` (the name of an ONNX Runtime
    CalibrationMethod member: MinMax, Entropy, Percentile, Distribution), with `ort_options`
    (quantize_static extra options whose names start with Calib, e.g. CalibPercentile), or
    `ranges(batches) -> {tensor name: (low, high)}` (see ActivationBatches)."""

    ort_method: Optional[str] = None
    ort_options: dict = field(default_factory=dict)
    ranges: Optional[Callable] = None
    description: str = ""

    def __post_init__(self):
        if (self.ort_method is None) == (self.ranges is None):
            raise ValueError("a Calibrator needs either ort_method (an ONNX Runtime CalibrationMethod name) "
                             "or ranges (a function of the activation batches), not both")
        if self.ranges is not None and not callable(self.ranges):
            raise ValueError(f"Calibrator ranges must be a function, got {type(self.ranges).__name__}")
        bad = [k for k in self.ort_options if not str(k).startswith("Calib")]
        if bad or (self.ort_options and self.ort_method is None):
            raise ValueError("Calibrator ort_options are ONNX Runtime's Calib* options of an ort_method "
                             f"calibration, got {', '.join(map(str, self.ort_options))}")


CALIBRATORS: Registry[Union[Calibrator, Callable]] = Registry("calibration method")

CALIBRATORS.register("minmax", Calibrator(ort_method="MinMax", description="each tensor's min and max"))
# quantize_static builds ONNX Runtime's Entropy calibrator with 128 histogram bins for 128 quantized
# ones: its KL search has a single candidate, the whole range, so the ranges are min-max. A real KL
# search (2,048 bins, TensorRT's method) was tried and not kept: it clipped the default run's first
# ReLU at 0.6-2.5 of its 5.9 (with 128 or 255 levels), and int8 lost 4.5-16 val points.
CALIBRATORS.register("entropy", Calibrator(ort_method="Entropy",
                                           description="ONNX Runtime's KL calibrator as quantize_static builds "
                                                       "it (128 bins: in effect each tensor's min and max)"))
CALIBRATORS.register("percentile", Calibrator(ort_method="Percentile",
                                              description="the 99.999th percentile of each tensor's absolute values"))


def calibrator(name: str) -> Calibrator:
    """The Calibrator registered as `name` (a registered function is its `ranges`); an unknown
    name is a ConfigError that lists the registered ones."""
    entry = CALIBRATORS.get(name)
    if isinstance(entry, Calibrator):
        return entry
    if callable(entry):
        return Calibrator(ranges=entry, description=(entry.__doc__ or "").strip().split("\n")[0])
    raise ConfigError(f"calibration method '{name}' is registered as a {type(entry).__name__}; "
                      "register a Calibrator or a ranges function")


def even_batch_size(count: int, batch_size: int) -> int:
    """The largest batch size <= `batch_size` that splits `count` images into equal batches
    (all of them when count <= batch_size; 1 at worst, e.g. for a prime count).

    ONNX Runtime's histogram calibrations (Entropy, Percentile, Distribution) stack every
    batch's activations into one array, which fails when the last batch is shorter. Equal
    batches give exactly the histograms of one batch of every image (the order and grouping
    of the values do not change a histogram), without padding or dropping any image."""
    if count <= batch_size:
        return max(count, 1)
    return next(b for b in range(batch_size, 0, -1) if count % b == 0)


def needs_even_batches(method: Calibrator) -> bool:
    """Whether `method` is an ONNX Runtime calibration other than MinMax (which takes
    batches of any size): see even_batch_size."""
    return method.ort_method is not None and method.ort_method != "MinMax"


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


def float_activations(model) -> list[str]:
    """The tensors ONNX Runtime's calibrators range, in graph order: every input and output
    of a node that is a float or float16 tensor (as shape inference types it) and not an
    initializer. `model` must have been through onnx.shape_inference."""
    from onnx import TensorProto

    infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    initializers = {i.name for i in model.graph.initializer}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    names = {}
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if (info is not None and name not in initializers and info.type.HasField("tensor_type")
                    and info.type.tensor_type.elem_type in floats):
                names[name] = None
    return list(names)


class ActivationBatches:
    """What a `ranges` calibrator gets: `names`, the model's float activations (float_activations),
    and, on iteration, one {name: array} per calibration batch of `reader` with every one of
    them (graph optimizations off, as ONNX Runtime's calibrators run). It can be iterated again
    (the reader is rewound), e.g. for a first pass over the ranges and a second over histograms."""

    def __init__(self, model_path, reader):
        import onnx

        self.model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
        self.names = float_activations(self.model)
        self.reader = reader
        self.session = None
        self.passes = 0

    def open(self):
        """The session that outputs every activation (created on the first iteration)."""
        graph = self.model.graph
        inputs = {i.name for i in graph.input}
        outputs = {o.name for o in graph.output}
        infos = {vi.name: vi for vi in graph.value_info}
        graph.output.extend(infos[n] for n in self.names if n not in inputs and n not in outputs)
        from edgekd.runtime.session import cpu_session
        from edgekd.train.compute import session_threads

        # the run's thread count (compute.threads); 0: ORT's default
        return cpu_session(self.model.SerializeToString(), graph_optimization="disable", threads=session_threads())

    def __iter__(self) -> Iterator[dict]:
        if self.session is None:
            self.session = self.open()
        if self.passes and hasattr(self.reader, "rewind"):
            self.reader.rewind()
        self.passes += 1
        inputs = {i.name for i in self.model.graph.input}
        fetched = [n for n in self.names if n not in inputs]
        while feed := self.reader.get_next():
            values = dict(zip(fetched, self.session.run(fetched, feed)))
            yield {n: np.asarray(feed[n]) if n in inputs else values[n] for n in self.names}


def tensors_data(ranges, names: list, method: str):
    """ONNX Runtime's TensorsData (what its calibrators hand its quantizer) from the
    {tensor name: (low, high)} a `ranges` calibrator returned. Every name in `names`
    needs a finite range with low <= high; anything else is a ConfigError."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    where = f"calibration method '{method}'"
    if not isinstance(ranges, Mapping):
        raise ConfigError(f"{where} must return {{tensor name: (low, high)}}, got {type(ranges).__name__}")
    missing = [n for n in names if n not in ranges]
    unknown = [str(n) for n in ranges if n not in set(names)]
    if missing or unknown:
        raise ConfigError(f"{where} must give a range for exactly the tensors in batches.names; "
                          + "; ".join(f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                                      for label, items in (("missing", missing), ("unknown", unknown)) if items))
    data = {}
    for name in names:
        try:
            low, high = (float(v) for v in ranges[name])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: the range of '{name}' must be two numbers (low, high), "
                              f"got {ranges[name]!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ConfigError(f"{where}: the range of '{name}' must be finite with low <= high, got ({low}, {high})")
        data[name] = TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
    return TensorsData(CalibrationMethod.MinMax, data)
