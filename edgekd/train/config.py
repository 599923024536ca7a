"""The training sections of a recipe: the keys every training stage shares (TrainConfig),
the teacher (TeacherConfig) and its transfer learning (TransferConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgekd.configtools import require


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every stage that trains."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.003
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    augment: bool = True  # random crop (pad 2) + horizontal flip, done on whole batches

    def __post_init__(self):
        require(self.epochs >= 0, f"{self._stage}.epochs must be >= 0, got {self.epochs}")
        require(self.batch_size > 0, f"{self._stage}.batch_size must be positive")
        require(self.lr > 0, f"{self._stage}.lr must be positive")
        require(self.weight_decay >= 0, f"{self._stage}.weight_decay must be >= 0")
        require(
            self.optimizer in OPTIMIZERS,
            f"unknown {self._stage}.optimizer '{self.optimizer}'; available: {', '.join(OPTIMIZERS)}",
        )

    _stage = "train"


OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TransferConfig:
    """Transfer learning for the teacher (edgekd.transfer): load `pretrained` except its
    classifier head, train a new head with the backbone frozen for `head_epochs` at
    teacher.lr, then fine-tune everything for teacher.epochs at `finetune_lr`
    (None: teacher.lr / 10)."""

    pretrained: str = ""
    head_epochs: int = 3
    finetune_lr: Optional[float] = None

    def __post_init__(self):
        require(bool(self.pretrained), "teacher.transfer.pretrained must name a weights file")
        require(self.head_epochs >= 0, f"teacher.transfer.head_epochs must be >= 0, got {self.head_epochs}")
        require(self.finetune_lr is None or self.finetune_lr > 0, "teacher.transfer.finetune_lr must be positive")


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    """The teacher: trained here (epochs > 0) or loaded from weights (then epochs may be 0).
    Defaults: the default run's ResNet-8, 10 epochs on the plain images."""

    arch: str = "resnet8"
    arch_args: dict = field(default_factory=dict)
    epochs: int = 10
    augment: bool = False
    weights: Optional[str] = None
    transfer: Optional[TransferConfig] = None  # start from pretrained weights, new head (edgekd.transfer)
    _stage = "teacher"
