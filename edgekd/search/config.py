"""The `distill.search` section of a recipe: SearchConfig, used when `distill.arch: auto`
(edgekd.search.select). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edgekd.configtools import check_flag, check_name, check_number, require, shown
from edgekd.models.family_blocks import BLOCKS
from edgekd.runtime.config import BenchConfig

MAX_LATENCY_MS = 3_600_000.0
MAX_SPEEDUP = 1000.0
MAX_INT8_SPEEDUP = 100.0
MAX_PROXY_EPOCHS = 100
MAX_PROXY_IMAGES = 10**8
# plain and rep are asked for by name: after 5 epochs on Fashion-MNIST, plain students were 0.7-1.2
# points below a residual one of as many parameters (benchmarks/results/student-search.md); the rep
# student distilled in full was 0.1 below the basic one the search chose (student-named-rep.md)
DEFAULT_BLOCKS = ("basic", "inverted")
# one convolution per block once exported (rep is fused into plain): the space gives them wide, shallow
# shapes of their own, where the others get the deeper three-stage ones (search.space.family_space)
ONE_CONV_BLOCKS = ("plain", "rep", "rep_ac")
AUTO = "auto"  # distill.arch that asks for the search
FAR_BELOW = 0.5  # every candidate under this share of the budget: the space is widened


@dataclass(frozen=True)
class SearchConfig:
    """The budget (`latency_ms`: int8 p50 on the target; `speedup`: over the teacher's int8
    model, timed side by side; `as_fast_as`: an architecture, e.g. resnet8, whose int8 model
    is exported and timed in the same run and sets the speed-up to reach; any of them given:
    all hold) on `provider` / `threads` / `batch`
    (defaults: edgekd bench's); `proxy_epochs` of distillation on `proxy_images` training
    images rank the candidates that meet it. `latency_table`: a table that `edgekd bench
    CANDIDATES_DIR --latency-table` wrote on the device, read instead of timing here.
    `export_only`: write the candidates folder and stop, to time it on the device.
    `proxy_margin`: a short proxy favours small students that learn fast (on Fashion-MNIST a
    21,786-parameter one led a 308,074-parameter one by 0.37 points after 2 epochs); among the
    candidates within this many points of the best proxy, the one with most parameters wins.
    `min_int8_speedup`: a candidate must also run in int8 at least this many times faster than its
    own fp32 model on the target (both timed in the same rounds): a student that int8 does not
    speed up is not shaped for the device, however fast it is (None: not asked).
    `blocks`: the block types of the space (edgekd.models.family): basic and inverted unless
    named; plain (no shortcuts), rep and rep_ac (plain once exported, trained with RepVGG /
    ACNet branches) run fastest in int8 for their size but learned less in our runs."""

    latency_ms: Optional[float] = None
    speedup: Optional[float] = None
    as_fast_as: Optional[str] = None  # an architecture (resnet8): a candidate must be as fast as its int8 model
    provider: str = BenchConfig.provider
    threads: int = BenchConfig.threads
    batch: int = BenchConfig.batch_size
    proxy_epochs: int = 2  # distillation epochs of each candidate's proxy (as measured: student-search.md)
    proxy_images: int = 10000  # training images of the proxies (a seeded shuffle's first)
    proxy_margin: float = 1.0  # proxy val top-1 points within which the candidate with more parameters wins
    min_int8_speedup: Optional[float] = None  # int8 over the candidate's own fp32, e.g. 2.5
    blocks: list = field(default_factory=lambda: list(DEFAULT_BLOCKS))
    export_only: bool = False
    latency_table: Optional[str] = None

    def __post_init__(self):
        for key in ("latency_ms", "speedup"):
            value = getattr(self, key)
            check_number(value, f"distill.search.{key}", optional=True,
                         high=MAX_LATENCY_MS if key == "latency_ms" else MAX_SPEEDUP)
            require(value is None or value > 0, f"distill.search.{key} must be > 0, got {shown(value)}")
        check_name(self.as_fast_as, "distill.search.as_fast_as", optional=True)
        require(self.as_fast_as != AUTO, "distill.search.as_fast_as names the architecture whose int8 latency is "
                                         "the budget, e.g. resnet8; auto is not one")
        check_name(self.provider, "distill.search.provider")
        check_number(self.threads, "distill.search.threads", integer=True, high=1024)
        require(self.threads >= 0, f"distill.search.threads must be >= 0 (0: ONNX Runtime's default), got {self.threads}")
        check_number(self.batch, "distill.search.batch", integer=True, high=4096)
        require(self.batch >= 1, f"distill.search.batch must be >= 1, got {self.batch}")
        check_number(self.min_int8_speedup, "distill.search.min_int8_speedup", optional=True, high=MAX_INT8_SPEEDUP)
        require(self.min_int8_speedup is None or self.min_int8_speedup > 0,
                f"distill.search.min_int8_speedup must be > 0 (times faster than fp32), got "
                f"{shown(self.min_int8_speedup)}")
        check_number(self.proxy_epochs, "distill.search.proxy_epochs", integer=True, high=MAX_PROXY_EPOCHS)
        require(self.proxy_epochs >= 1, f"distill.search.proxy_epochs must be >= 1, got {self.proxy_epochs}")
        check_number(self.proxy_margin, "distill.search.proxy_margin", high=100.0)
        require(self.proxy_margin >= 0, f"distill.search.proxy_margin must be >= 0 (points of val top-1), got "
                                        f"{shown(self.proxy_margin)}")
        check_number(self.proxy_images, "distill.search.proxy_images", integer=True, high=MAX_PROXY_IMAGES)
        require(self.proxy_images >= 1, f"distill.search.proxy_images must be >= 1, got {self.proxy_images}")
        require(isinstance(self.blocks, list) and self.blocks and all(b in BLOCKS for b in self.blocks),
                f"distill.search.blocks must be a non-empty list of {', '.join(BLOCKS)}, got {shown(self.blocks)}")
        check_flag(self.export_only, "distill.search.export_only")
        check_name(self.latency_table, "distill.search.latency_table", optional=True)
        require(not (self.export_only and self.latency_table),
                "distill.search.export_only writes candidates to time on the device, and latency_table reads "
                "their timings: set one of them")

    def check_for(self, distill) -> None:
        """What distill.arch: auto needs of the rest of the distill section."""
        if distill.arch != AUTO:
            return
        require(self.has_budget(), "distill.arch: auto chooses the student by its int8 latency: set "
                                   "distill.search.latency_ms, speedup or as_fast_as")
        require(not distill.arch_args, "distill.arch: auto chooses arch_args itself: remove distill.arch_args")
        require(not distill.terms, "distill.terms name layers of the student, unknown before distill.arch: auto "
                                   "chooses it: remove distill.terms or name a distill.arch")

    def has_budget(self) -> bool:
        return self.latency_ms is not None or self.speedup is not None or self.as_fast_as is not None

    def met(self, p50_ms: float, reference_p50_ms: float) -> bool:
        ok = self.latency_ms is None or p50_ms <= self.latency_ms
        return ok and (self.speedup is None or reference_p50_ms / p50_ms >= self.speedup)

    def far_below(self, p50_ms: float, reference_p50_ms: float) -> bool:
        """Met with room to spare: under FAR_BELOW of the budget."""
        ok = self.latency_ms is None or p50_ms <= FAR_BELOW * self.latency_ms
        return ok and (self.speedup is None or reference_p50_ms / p50_ms >= self.speedup / FAR_BELOW)

    def describe(self) -> str:
        from edgekd.runtime.measure import budget_text

        where = f"{self.provider}, {self.threads or 'default'} threads, batch {self.batch}"
        budget = budget_text(self.latency_ms, self.speedup, measured="int8 p50", reference="the teacher's int8 model")
        if self.as_fast_as is not None:
            budget = " and ".join(filter(None, [budget, f"as fast as {self.as_fast_as}'s int8 model"]))
        if self.min_int8_speedup is not None:
            budget += f", int8 at least {self.min_int8_speedup:g}x faster than the candidate's fp32"
        return f"{budget} ({where})"

    def gains_enough(self, int8_over_fp32) -> bool:
        """Whether a candidate's int8 speed-up over its own fp32 meets min_int8_speedup (always, when not asked)."""
        return self.min_int8_speedup is None or (int8_over_fp32 is not None and int8_over_fp32 >= self.min_int8_speedup)
