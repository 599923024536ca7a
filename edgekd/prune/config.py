"""The `prune` section of a recipe: PruneConfig (how much, by which importance, with which
targets and fine-tuning), checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgekd.configtools import MAX_EPOCHS, check_flag, check_names, check_number, require, shown
from edgekd.prune.importance import IMPORTANCES
from edgekd.train.config import TrainConfig

PRUNE_FINETUNE = ("step", "end")

MAX_STEPS = 1000
MAX_ROUND_TO = 1024
MAX_COUNT = 10**15  # params or MACs of a target: far beyond any model edgekd prunes
MAX_LATENCY_MS = 3_600_000.0  # an hour per image
MAX_SPEEDUP = 1000.0
MAX_LATENCY_ROUNDS = 10_000
MAX_SPARSITY = 1.0  # the L1 penalty on batch-norm scales (network slimming uses about 1e-4)


@dataclass(frozen=True)
class PruneConfig(TrainConfig):
    """Structured channel pruning of the distilled student (off by default).

    `steps` rounds of: remove a share of the channels, then `epochs` of KD fine-tuning
    from the teacher (temperature and alpha from distill). The first convolution and the
    classifier are protected, plus the layers named in `protect`. `target_macs` and/or
    `target_params`: stop at the first step at or below them (`ratio` is then the most removed).

    Latency target (edgekd.prune.latency): with `target_latency_ms` (absolute p50) and/or
    `target_speedup` (over the unpruned model timed in the same loop), `latency_step` of
    the channels go per step, at most `ratio` in all, and each candidate is exported
    (int8 when quantize is on) and timed on bench.provider at batch 1 with bench.threads,
    until it meets the target. `finetune`: 'step' (KD after every step) or 'end' (once).
    `sparsity` > 0: network slimming, `sparsity_epochs` of training with that L1 penalty
    on the batch-norm scales before pruning (for importance 'bn_scale').
    """

    enabled: bool = False
    ratio: float = 0.5  # share of channels removed from each prunable layer (all steps together)
    importance: str = "l1"  # a name in edgekd.prune.importance.IMPORTANCES (l1, l2, bn_scale, taylor, random)
    global_pruning: bool = False
    round_to: int = 8  # channel counts stay multiples of this, so kernels stay fast
    protect: list = field(default_factory=list)
    steps: int = 1
    epochs: int = 2
    lr: float = 0.001
    finetune: str = "step"
    target_macs: Optional[int] = None
    target_params: Optional[int] = None
    target_latency_ms: Optional[float] = None
    target_speedup: Optional[float] = None
    latency_step: float = 0.05
    latency_rounds: int = 20  # interleaved timing rounds per candidate (10 runs of each model per round)
    sparsity: float = 0.0
    sparsity_epochs: int = 0
    _stage = "prune"

    @property
    def latency_targeted(self) -> bool:
        return self.target_latency_ms is not None or self.target_speedup is not None

    def __post_init__(self):
        super().__post_init__()
        check_flag(self.enabled, "prune.enabled")
        check_flag(self.global_pruning, "prune.global_pruning")
        check_number(self.ratio, "prune.ratio")
        require(0.0 < self.ratio < 1.0, "prune.ratio must be between 0 and 1")
        require(isinstance(self.finetune, str) and self.finetune in PRUNE_FINETUNE,
               f"unknown prune.finetune {shown(self.finetune)}; available: {', '.join(PRUNE_FINETUNE)}")
        for key in ("target_macs", "target_params"):
            check_number(getattr(self, key), f"prune.{key}", high=MAX_COUNT, integer=True, optional=True)
        check_number(self.target_latency_ms, "prune.target_latency_ms", high=MAX_LATENCY_MS, optional=True)
        check_number(self.target_speedup, "prune.target_speedup", high=MAX_SPEEDUP, optional=True)
        check_number(self.latency_step, "prune.latency_step")
        check_number(self.latency_rounds, "prune.latency_rounds", high=MAX_LATENCY_ROUNDS, integer=True)
        check_number(self.sparsity, "prune.sparsity", high=MAX_SPARSITY)
        check_number(self.sparsity_epochs, "prune.sparsity_epochs", high=MAX_EPOCHS, integer=True)
        check_number(self.round_to, "prune.round_to", high=MAX_ROUND_TO, integer=True)
        check_number(self.steps, "prune.steps", high=MAX_STEPS, integer=True)
        require(self.target_macs is None or self.target_macs > 0, "prune.target_macs must be positive")
        require(self.target_params is None or self.target_params > 0, "prune.target_params must be positive")
        require(self.target_latency_ms is None or self.target_latency_ms > 0, "prune.target_latency_ms must be positive")
        require(self.target_speedup is None or self.target_speedup > 0, "prune.target_speedup must be positive")
        require(0.0 < self.latency_step <= self.ratio,
               f"prune.latency_step must be between 0 and prune.ratio ({self.ratio}), got {self.latency_step}")
        require(self.latency_rounds >= 1, "prune.latency_rounds must be >= 1")
        require(self.sparsity >= 0, "prune.sparsity must be >= 0")
        require(self.sparsity_epochs >= 0, "prune.sparsity_epochs must be >= 0")
        require(
            isinstance(self.importance, str) and self.importance in IMPORTANCES,
            f"unknown prune.importance {shown(self.importance)}; available: {', '.join(IMPORTANCES.names())}",
        )
        require(self.round_to >= 1, "prune.round_to must be >= 1")
        require(self.steps >= 1, "prune.steps must be >= 1")
        require(isinstance(self.protect, list) and all(isinstance(p, str) for p in self.protect),
                "prune.protect must be a list of layer names")
        check_names(self.protect, "prune.protect")
