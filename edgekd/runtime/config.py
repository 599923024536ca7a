"""The recipe's `bench` section (BenchConfig): the latency protocol, the execution provider
(a short name of edgekd.runtime.providers.PROVIDERS) and ONNX Runtime's thread options."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekd.configtools import (
    MAX_BATCH_SIZE,
    check_flag,
    check_name,
    check_number,
    clip,
    require,
)
from edgekd.errors import ConfigError
from edgekd.runtime.measure import MAX_RUNS, MAX_THREADS  # the timer's own bounds
from edgekd.runtime.measure import MAX_SECONDS as MAX_BENCH_SECONDS
from edgekd.runtime.preprocessing import check_stated
from edgekd.runtime.providers import resolve_provider
from edgekd.runtime.session_options import check_graph_optimization, check_option_map


@dataclass(frozen=True)
class BenchConfig:
    """Latency protocol: warm-up (at least `warmup` runs and `warmup_seconds`), then timed
    runs (at least `runs` and `min_seconds`); ONNX Runtime thread and spinning options;
    `interleave`: time the models side by side (edgekd.runtime.measure.measure_interleaved);
    None: whenever several models or providers are compared.
    `provider`: a registered short name, an ONNX Runtime provider name or an installed plugin's
    id (resolve_provider). `provider_options` ('KEY' for every provider, 'PROVIDER:KEY' for
    one), `session_config` and `graph_optimization`: see edgekd.runtime.session_options."""

    provider: str = "cpu"
    batch_size: int = 1
    warmup: int = 10
    runs: int = 200
    min_seconds: float = 1.0
    threads: int = 0  # 0: ONNX Runtime's default
    warmup_seconds: float = 0.0
    inter_threads: int = 0  # > 0: parallel execution mode with this many inter-op threads
    intra_spinning: bool | None = None  # session.intra_op.allow_spinning; None: ORT's default (on)
    inter_spinning: bool | None = None  # session.inter_op.allow_spinning
    # time all models side by side in short rotating rounds instead of one after another;
    # None: whenever several models or providers are compared
    interleave: bool | None = None
    provider_options: dict = field(default_factory=dict)
    session_config: dict = field(default_factory=dict)  # SessionOptions.add_session_config_entry
    graph_optimization: str = "all"  # disable | basic | extended | all
    # stated preprocessing: {preset, mean, std, scale, layout, channel_order, input_size, crop_fraction}
    # (edgekd.runtime.preprocessing); None: each model's own metadata
    preprocess: dict | None = None
    # eval arrays (.npz, a dataset) at another size or channel count than the model's input:
    # converted and resized per its preprocessing (noted in the row) instead of refused
    fit_data: bool = False
    # an image folder's files that cannot be decoded are skipped (logged, first ones named), not refused
    skip_bad: bool = False

    def __post_init__(self):
        check_name(self.provider, "bench.provider")
        try:
            resolve_provider(self.provider)  # an unknown name is a ConfigError that lists the known ones
        except ConfigError as exc:
            raise ConfigError(clip(str(exc))) from None
        check_number(self.batch_size, "bench.batch_size", high=MAX_BATCH_SIZE, integer=True)
        require(self.batch_size > 0, "bench.batch_size must be positive")
        check_number(self.warmup, "bench.warmup", high=MAX_RUNS, integer=True)
        require(self.warmup >= 0, "bench.warmup must be >= 0")
        check_number(self.runs, "bench.runs", high=MAX_RUNS, integer=True)
        require(self.runs > 0, "bench.runs must be positive")
        check_number(self.min_seconds, "bench.min_seconds", high=MAX_BENCH_SECONDS)
        require(self.min_seconds >= 0, "bench.min_seconds must be >= 0")
        check_number(self.threads, "bench.threads", high=MAX_THREADS, integer=True)
        require(self.threads >= 0, "bench.threads must be >= 0")
        check_number(self.warmup_seconds, "bench.warmup_seconds", high=MAX_BENCH_SECONDS)
        require(self.warmup_seconds >= 0, "bench.warmup_seconds must be >= 0")
        check_number(self.inter_threads, "bench.inter_threads", high=MAX_THREADS, integer=True)
        require(self.inter_threads >= 0, "bench.inter_threads must be >= 0")
        check_flag(self.intra_spinning, "bench.intra_spinning", optional=True)
        check_flag(self.inter_spinning, "bench.inter_spinning", optional=True)
        check_flag(self.fit_data, "bench.fit_data")
        check_flag(self.skip_bad, "bench.skip_bad")
        require(self.interleave is None or isinstance(self.interleave, bool),
                "bench.interleave must be true or false (or unset: whenever several results are compared)")
        check_option_map(self.provider_options, "bench.provider_options", provider_prefix=True)
        check_option_map(self.session_config, "bench.session_config")
        for key, value in (("session.intra_op.allow_spinning", self.intra_spinning),
                           ("session.inter_op.allow_spinning", self.inter_spinning)):
            require(value is None or key not in self.session_config,
                    f"bench.session_config sets {key} and the spinning option sets it too; give one")
        check_graph_optimization(self.graph_optimization)
        object.__setattr__(self, "preprocess", check_stated(self.preprocess))  # plain values, or exit 2
