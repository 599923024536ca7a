"""The recipe's `bench` section (BenchConfig): the latency protocol, the execution provider
(a short name of edgekd.runtime.providers.PROVIDERS) and ONNX Runtime's thread options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgekd.configtools import require
from edgekd.runtime.providers import resolve_provider


@dataclass(frozen=True)
class BenchConfig:
    """Latency protocol: warm-up (at least `warmup` runs and `warmup_seconds`), then timed
    runs (at least `runs` and `min_seconds`); ONNX Runtime thread and spinning options;
    `interleave`: time the models side by side (edgekd.runtime.measure.measure_interleaved).
    `provider`: a registered short name or an ONNX Runtime provider name (resolve_provider)."""

    provider: str = "cpu"
    batch_size: int = 1
    warmup: int = 10
    runs: int = 200
    min_seconds: float = 1.0
    threads: int = 0  # 0: ONNX Runtime's default
    warmup_seconds: float = 0.0
    inter_threads: int = 0  # > 0: parallel execution mode with this many inter-op threads
    intra_spinning: Optional[bool] = None  # session.intra_op.allow_spinning; None: ORT's default (on)
    inter_spinning: Optional[bool] = None  # session.inter_op.allow_spinning
    # time all models side by side in short rotating rounds instead of one after another
    interleave: bool = False

    def __post_init__(self):
        resolve_provider(self.provider)  # an unknown name is a ConfigError that lists the known ones
        require(self.batch_size > 0, "bench.batch_size must be positive")
        require(self.warmup >= 0, "bench.warmup must be >= 0")
        require(self.runs > 0, "bench.runs must be positive")
        require(self.min_seconds >= 0, "bench.min_seconds must be >= 0")
        require(self.threads >= 0, "bench.threads must be >= 0")
        require(self.warmup_seconds >= 0, "bench.warmup_seconds must be >= 0")
        require(self.inter_threads >= 0, "bench.inter_threads must be >= 0")
        require(isinstance(self.interleave, bool), "bench.interleave must be true or false")
