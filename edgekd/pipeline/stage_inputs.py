"""What each stage is handed besides its own recipe section: one frozen dataclass per stage,
built in pipeline/chain.py:_inputs, so that a stage reads attributes a type checker and a
reader can follow (a misspelt name fails at once, not as a KeyError inside the stage).

`splits` is the run's edgekd.data.splits.Splits; `data` a edgekd.train.plumbing.TrainData
(in-memory tensors, or sources when the splits are streamed). Importing this module does not
import torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekd.data.splitting import Splits
    from edgekd.distill.config import DistillConfig
    from edgekd.prune.latency import Deployed
    from edgekd.train.plumbing import TrainData


@dataclass(frozen=True)
class DataInputs:
    splits: Splits


@dataclass(frozen=True)
class TrainingInputs:
    """What every stage that trains reads first: the splits and the data it trains on."""

    splits: Splits
    data: TrainData


@dataclass(frozen=True)
class TeacherInputs(TrainingInputs):
    """`data`: the labeled train images only, repeated in turn to the train split's size when
    labels are scarce (edgekd.data.unlabeled) and a teacher learns from them supervised (only
    its val split is read otherwise); `every`: the whole train split, its unlabeled images too
    (teacher.semi_supervised); `extra_teachers`: the TeacherConfigs of distill.extra_teachers
    when the distillation scheme learns from them, else []."""

    every: TrainData
    extra_teachers: list = field(default_factory=list)


@dataclass(frozen=True)
class DistillInputs(TrainingInputs):
    """`teachers`: the teacher then the extra teachers (offline and born-again; [] for the
    schemes that do not learn from them); `deployed`: with distill.arch auto, how the student
    will be deployed ({quant_cfg, opset}: what edgekd.search exports each candidate with)."""

    teachers: list
    deployed: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PruneInputs(TrainingInputs):
    """`labeled`: `data` with the labeled train images only (what sparsity training and the
    gradients of 'taylor' read); `kd`: the distill section (fine-tuning distils from the
    teacher with its temperature and alpha); `deployed`: how the model will be deployed
    (edgekd.prune.latency.Deployed: int8 or not, quantize and bench sections), what
    prune.target_latency_ms measures."""

    labeled: TrainData
    teacher: Any
    student: Any
    kd: DistillConfig
    deployed: Deployed


@dataclass(frozen=True)
class ExportInputs:
    """`models`: {stage: (model, arch, that stage's record)}; data.val_x: the parity check's images."""

    splits: Splits
    data: TrainData
    models: dict


@dataclass(frozen=True)
class QuantizeInputs:
    """For QAT also `data`, `teacher`, `student`, `kd` (the distill section: temperature and
    alpha) and `opset` (export.opset); None otherwise."""

    splits: Splits
    data: TrainData | None = None
    teacher: Any = None
    student: Any = None
    kd: DistillConfig | None = None
    opset: int | None = None


@dataclass(frozen=True)
class BenchInputs:
    """Nothing: the models are the run directory's ONNX files."""


@dataclass(frozen=True)
class ReportInputs:
    """`stages`: every stage's record so far (the report's own excluded)."""

    stages: dict
