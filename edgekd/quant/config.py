"""The recipe's `quantize` section: QuantConfig (PTQ through ONNX Runtime, or QAT with the
settings of QatConfig), checked against the calibration methods of
edgekd.quant.calibration.CALIBRATORS and the target presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgekd.configtools import MAX_BATCH_SIZE, check_flag, check_names, check_number, require, shown
from edgekd.quant.calibration import CALIBRATORS
from edgekd.train.config import TrainConfig

INT8_TYPES = ("int8", "uint8")


QUANT_TARGETS = ("auto", "x86-vnni", "x86-avx2", "arm64", "cuda", "openvino")


QUANT_METHODS = ("ptq", "qat")


MAX_PAD_CHANNELS = 1024


MAX_DROP_POINTS = 100.0  # top-1 points: 100 is every image


@dataclass(frozen=True)
class QatConfig(TrainConfig):
    """Quantization-aware KD fine-tuning (quantize.method: qat), see edgekd.quant.qat.

    `observe_fraction`: share of the steps during which the activation ranges follow a
    moving average of each batch's min/max; after that they are frozen. A short fine-tune
    from the distilled student: low lr, teacher logits cached (augment off)."""

    epochs: int = 2
    lr: float = 0.0005
    augment: bool = False
    observe_fraction: float = 0.5
    _stage = "quantize.qat"

    def __post_init__(self):
        super().__post_init__()
        check_number(self.observe_fraction, "quantize.qat.observe_fraction")
        require(0.0 <= self.observe_fraction <= 1.0, "quantize.qat.observe_fraction must be between 0 and 1")


@dataclass(frozen=True)
class QuantConfig:
    """Post-training static int8 through ONNX Runtime, QDQ format.

    `calibration`: a method registered in edgekd.quant.calibration.CALIBRATORS (built in:
    minmax, entropy, percentile). `target` picks the defaults of activation_type /
    weight_type / reduce_range / per_channel / pad_input_channels_to (see
    edgekd.quant.presets.TARGET_PRESETS; 'auto' reads the CPU flags). A field left at None
    takes the target's value; a field set in the recipe always wins.
    `exclude_nodes` / `exclude_op_types` stay float. `max_drop`: the accuracy budget in
    top-1 points on the val split (None: no budget); when int8 loses more, the most
    sensitive nodes are kept in float one by one until it fits, else the run fails (exit 3).
    `method: qat` fine-tunes with fake quantization instead (settings in `qat`; the
    activation type comes from the target as above; calibration, per_channel, weight_type,
    reduce_range and the exclude lists are PTQ-only; max_drop is checked, with no search).
    """

    enabled: bool = True
    method: str = "ptq"
    qat: QatConfig = field(default_factory=QatConfig)
    target: str = "auto"
    calibration: str = "minmax"
    calib_batch_size: int = 32
    per_channel: Optional[bool] = None
    activation_type: Optional[str] = None
    weight_type: Optional[str] = None
    reduce_range: Optional[bool] = None
    pad_input_channels_to: Optional[int] = None
    exclude_nodes: list = field(default_factory=list)
    exclude_op_types: list = field(default_factory=list)
    max_drop: Optional[float] = 1.0

    def __post_init__(self):
        check_flag(self.enabled, "quantize.enabled")
        require(isinstance(self.qat, QatConfig), "quantize.qat must be a mapping of QAT settings")
        require(
            isinstance(self.target, str) and self.target in QUANT_TARGETS,
            f"unknown quantize.target {shown(self.target)}; available: {', '.join(QUANT_TARGETS)}",
        )
        require(
            isinstance(self.calibration, str) and self.calibration in CALIBRATORS,
            f"unknown quantize.calibration {shown(self.calibration)}; available: {', '.join(CALIBRATORS.names())}",
        )
        check_number(self.calib_batch_size, "quantize.calib_batch_size", high=MAX_BATCH_SIZE, integer=True)
        require(self.calib_batch_size > 0, "quantize.calib_batch_size must be positive")
        for key in ("per_channel", "reduce_range"):
            check_flag(getattr(self, key), f"quantize.{key}", optional=True)
        for key in ("activation_type", "weight_type"):
            value = getattr(self, key)
            require(value is None or (isinstance(value, str) and value in INT8_TYPES),
                   f"quantize.{key} must be one of {', '.join(INT8_TYPES)}, got {shown(value)}")
        require(self.pad_input_channels_to is None
               or (isinstance(self.pad_input_channels_to, int) and not isinstance(self.pad_input_channels_to, bool)
                   and 0 <= self.pad_input_channels_to <= MAX_PAD_CHANNELS),
               f"quantize.pad_input_channels_to must be a whole number >= 0 (0: no padding), at most "
               f"{MAX_PAD_CHANNELS}, got {shown(self.pad_input_channels_to)}")
        for key in ("exclude_nodes", "exclude_op_types"):
            require(isinstance(getattr(self, key), list) and all(isinstance(v, str) and v for v in getattr(self, key)),
                   f"quantize.{key} must be a list of names")
            check_names(getattr(self, key), f"quantize.{key}")
        check_number(self.max_drop, "quantize.max_drop", high=MAX_DROP_POINTS, optional=True)
        require(self.max_drop is None or self.max_drop >= -MAX_DROP_POINTS,  # < 0: int8 must beat fp32 (tests)
               f"quantize.max_drop must be a number of top-1 points (-100..100) or null, got {shown(self.max_drop)}")
        require(isinstance(self.method, str) and self.method in QUANT_METHODS,
               f"unknown quantize.method {shown(self.method)}; available: {', '.join(QUANT_METHODS)}")
        if self.method == "qat":  # QAT's scheme is fixed: per-channel symmetric int8 weights, nothing float
            require(self.per_channel in (None, True) and self.weight_type in (None, "int8"),
                   "quantize.method qat uses per-channel int8 weights; remove quantize.per_channel / weight_type")
            require(not self.exclude_nodes and not self.exclude_op_types,
                   "quantize.exclude_nodes / exclude_op_types are for method ptq; QAT quantizes every layer")
