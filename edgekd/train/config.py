"""The training sections of a recipe: the keys every training stage shares (TrainConfig),
the teacher (TeacherConfig) and its transfer learning (TransferConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from edgekd.configtools import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_LR,
    MAX_WEIGHT_DECAY,
    check_arch_args,
    check_builtin_arch_args,
    check_flag,
    check_name,
    check_number,
    check_path,
    require,
    shown,
)


@dataclass(frozen=True)
class ComputeConfig:
    """How every training stage computes (edgekd.train.compute): `precision` auto, fp32,
    bf16 or fp16 (auto: bf16 autocast on a CPU with AVX512-BF16/AMX and on CUDA GPUs that
    support it, fp16 with a GradScaler on other GPUs, else fp32); `channels_last` auto (on),
    true or false; `recompute_batch_norm` auto, true or false: batch-norm statistics
    recomputed from training images after each epoch (edgekd.models.bn; auto: for
    torchvision: and timm: models, whose deep stacks lag a short schedule); `threads` auto or
    a number: torch's intra-op threads while training and ONNX Runtime's during calibration
    and the budget search (auto: the CPUs this process may use, re-measured on the training
    steps: edgekd.train.threads). The device is the recipe's top-level `device`."""

    precision: str = "auto"
    channels_last: Union[bool, str] = "auto"
    recompute_batch_norm: Union[bool, str] = "auto"
    threads: Union[int, str] = "auto"

    def __post_init__(self):
        from edgekd.train.compute import PRECISIONS

        require(self.precision in PRECISIONS,
                f"unknown compute.precision {shown(self.precision)}; available: {', '.join(PRECISIONS)}")
        require(self.channels_last in ("auto", True, False),
                f"compute.channels_last must be auto, true or false, got {shown(self.channels_last)}")
        require(self.recompute_batch_norm in ("auto", True, False),
                f"compute.recompute_batch_norm must be auto, true or false, got {shown(self.recompute_batch_norm)}")
        from edgekd.train.threads import check_setting

        check_setting(self.threads)


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
        stage = self._stage
        check_number(self.epochs, f"{stage}.epochs", high=MAX_EPOCHS, integer=True)
        require(self.epochs >= 0, f"{stage}.epochs must be >= 0, got {self.epochs}")
        check_number(self.batch_size, f"{stage}.batch_size", high=MAX_BATCH_SIZE, integer=True)
        require(self.batch_size > 0, f"{stage}.batch_size must be positive, got {self.batch_size}")
        check_number(self.lr, f"{stage}.lr", high=MAX_LR)
        require(self.lr > 0, f"{stage}.lr must be positive, got {self.lr}")
        check_number(self.weight_decay, f"{stage}.weight_decay", high=MAX_WEIGHT_DECAY)
        require(self.weight_decay >= 0, f"{stage}.weight_decay must be >= 0, got {self.weight_decay}")
        require(
            isinstance(self.optimizer, str) and self.optimizer in OPTIMIZERS,
            f"unknown {stage}.optimizer {shown(self.optimizer)}; available: {', '.join(OPTIMIZERS)}",
        )
        check_flag(self.augment, f"{stage}.augment")

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
        require(isinstance(self.pretrained, str) and bool(self.pretrained),
                "teacher.transfer.pretrained must name a weights file")
        check_path(self.pretrained, "teacher.transfer.pretrained", optional=False)
        check_number(self.head_epochs, "teacher.transfer.head_epochs", high=MAX_EPOCHS, integer=True)
        require(self.head_epochs >= 0, f"teacher.transfer.head_epochs must be >= 0, got {self.head_epochs}")
        check_number(self.finetune_lr, "teacher.transfer.finetune_lr", high=MAX_LR, optional=True)
        require(self.finetune_lr is None or self.finetune_lr > 0, "teacher.transfer.finetune_lr must be positive")


@dataclass(frozen=True)
class SemiSupervisedConfig:
    """A teacher that learns from the unlabeled train images too (edgekd.train.semi_supervised,
    FixMatch): each step, `labeled_batch` labeled images with cross-entropy, and the train
    split's batch with the moving average's confident predictions (top probability >=
    `threshold`) as labels for a strongly augmented view, weighted by `unlabeled_weight`;
    the average's weights decay by `ema_decay` per step."""

    threshold: float = 0.95
    labeled_batch: int = 64
    unlabeled_weight: float = 1.0
    ema_decay: float = 0.99

    def __post_init__(self):
        where = "teacher.semi_supervised"
        check_number(self.threshold, f"{where}.threshold")
        require(0 < self.threshold <= 1, f"{where}.threshold must be in (0, 1], got {self.threshold}")
        check_number(self.labeled_batch, f"{where}.labeled_batch", high=MAX_BATCH_SIZE, integer=True)
        require(self.labeled_batch >= 2, f"{where}.labeled_batch must be at least 2, got {self.labeled_batch}")
        check_number(self.unlabeled_weight, f"{where}.unlabeled_weight", high=1e3)
        require(self.unlabeled_weight >= 0, f"{where}.unlabeled_weight must be >= 0, got {self.unlabeled_weight}")
        check_number(self.ema_decay, f"{where}.ema_decay")
        require(0 <= self.ema_decay < 1, f"{where}.ema_decay must be in [0, 1), got {self.ema_decay}")


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
    # a teacher that exists only as ONNX: response KD from ONNX Runtime's logits (edgekd.distill.onnx_teacher)
    onnx: Optional[str] = None
    # learn from the unlabeled train images too (FixMatch), when labels are scarce
    semi_supervised: Optional[SemiSupervisedConfig] = None
    _stage = "teacher"

    def __post_init__(self):
        super().__post_init__()
        check_arch_fields(self)
        check_path(self.weights, f"{self._stage}.weights")
        check_path(self.onnx, f"{self._stage}.onnx")
        require(self.onnx is None or (self.weights is None and self.transfer is None),
                f"{self._stage}.onnx is a finished teacher: give it without {self._stage}.weights or .transfer")
        require(self.transfer is None or isinstance(self.transfer, TransferConfig),
                f"{self._stage}.transfer must be a mapping like {{pretrained: FILE}}")
        require(self.semi_supervised is None or isinstance(self.semi_supervised, SemiSupervisedConfig),
                f"{self._stage}.semi_supervised must be a mapping like {{threshold: 0.95}}")
        require(self.semi_supervised is None or (self.onnx is None and self.transfer is None),
                f"{self._stage}.semi_supervised trains the teacher from scratch or from its weights: "
                f"give it without {self._stage}.onnx or .transfer")


def check_arch_fields(cfg) -> None:
    """A section's `arch` (a registered name, 'torchvision:NAME' or 'module:function') and
    `arch_args` (plain data: check_arch_args); the architecture checks its arguments when built."""
    check_name(cfg.arch, f"{cfg._stage}.arch")
    check_arch_args(cfg.arch_args, f"{cfg._stage}.arch_args")
    check_builtin_arch_args(cfg.arch, cfg.arch_args, f"{cfg._stage}.arch_args")
