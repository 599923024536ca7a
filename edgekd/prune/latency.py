"""Pruning to a measured latency: prune a small share of channels, export the candidate,
time it on the target provider, and stop when its p50 meets the target.

MACs predict latency badly on small models (per-operator overhead, channel counts the
kernels handle badly), so the only trustworthy stop criterion is a measurement of the
format that will be deployed: the int8 ONNX model when the quantize stage is on (each
candidate is quantized, a few seconds), else the fp32 ONNX model. Timings drift with
the machine's load, so each candidate is timed side by side with the unpruned reference
in one loop of interleaved rounds and the two medians are compared; never against a
number measured once, earlier.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.cost import count_macs, count_params
from edgekd.onnx_export import ExportConfig
from edgekd.prune.config import PruneConfig
from edgekd.quant.config import QuantConfig
from edgekd.runtime.config import BenchConfig


def export_deployable(model: nn.Module, stem: str | Path, *, input_shape: tuple[int, int, int],
                      calib_images: np.ndarray | None, int8: bool = True, quant_cfg: QuantConfig | None = None,
                      export_cfg: ExportConfig | None = None, metadata: dict | None = None) -> tuple[Path, Path]:
    """(fp32 path, deployed path): `model` exported to `stem`.fp32.onnx (parity-checked
    against PyTorch) and, with int8, quantized to `stem`.int8.onnx with `calib_images`."""
    from edgekd.onnx_export import to_onnx
    from edgekd.quant.ptq import ptq

    stem = Path(stem)
    fp32 = stem.with_name(stem.name + ".fp32.onnx")
    # one parity batch size: the candidate is timed, not shipped; the pipeline's export
    # stage checks the final model at every configured batch size
    cfg = export_cfg or ExportConfig(check_batch_sizes=[1])
    to_onnx(model, fp32, input_shape=input_shape, metadata=dict(metadata or {}), cfg=cfg)
    if not int8:
        return fp32, fp32
    deployed = stem.with_name(stem.name + ".int8.onnx")
    ptq(fp32, deployed, calib_images=calib_images, cfg=quant_cfg or QuantConfig(max_drop=None),
        metadata=dict(metadata or {}), progress=False)
    return fp32, deployed


def interleaved_p50_ms(paths: list, image: np.ndarray, target: BenchConfig | None = None, *, rounds: int = 20,
                       runs_per_round: int = 10, warmup: int = 10) -> list[float]:
    """Median latency (ms, batch 1) of each model on `target` (a BenchConfig's provider, threads
    and session options; None: the CPU with ONNX Runtime's defaults), measured side by side:
    every round runs each model `runs_per_round` times in turn (the order rotates each round),
    so that load from other processes falls on all models alike; the median is over all timed
    runs. Timed by edgekd.runtime.measure (interleaved_medians), after a cold run and `warmup` runs."""
    from edgekd.onnx_export import INPUT_NAME
    from edgekd.runtime.measure import interleaved_medians
    from edgekd.runtime.session import make_session

    feed = {INPUT_NAME: np.ascontiguousarray(image[None], dtype=np.float32)}
    sessions = [(make_session(p, target), feed) for p in paths]
    return interleaved_medians(sessions, rounds=rounds, round_runs=runs_per_round, warmup=warmup)


@dataclass(frozen=True)
class Deployed:
    """How the pruned model will be deployed, so how each candidate is exported and timed:
    int8 (quantized with quant_cfg; None: QuantConfig(max_drop=None)) or fp32, on `bench`'s
    provider, threads and session options (the recipe's bench section), at batch 1."""

    int8: bool = True
    quant_cfg: QuantConfig | None = None
    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass
class LatencyTarget:
    """What 'fast enough' means: an absolute p50 (ms) and/or a speed-up over the reference
    (the unpruned model, timed in the same loop). Both set: both must hold."""

    latency_ms: float | None = None
    speedup: float | None = None

    def __post_init__(self):
        if self.latency_ms is None and self.speedup is None:
            raise ConfigError("a latency target needs prune.target_latency_ms or prune.target_speedup")

    def met(self, reference_ms: float, candidate_ms: float) -> bool:
        ok = True
        if self.latency_ms is not None:
            ok = ok and candidate_ms <= self.latency_ms
        if self.speedup is not None:
            ok = ok and reference_ms / candidate_ms >= self.speedup
        return ok

    def describe(self) -> str:
        from edgekd.runtime.measure import budget_text

        return budget_text(self.latency_ms, self.speedup, measured="p50", reference="the unpruned model")


@dataclass
class LatencyResult:
    target: str
    met: bool
    format: str  # 'int8' or 'fp32': what was timed
    reference: dict  # the unpruned model: macs, params
    steps: list = field(default_factory=list)  # one per timed candidate
    final: dict = field(default_factory=dict)  # the returned model, timed after fine-tuning
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"target": self.target, "met": self.met, "format": self.format, "reference": self.reference,
                "steps": self.steps, "final": self.final, "message": self.message, "seconds": round(self.seconds, 3)}


def prune_to_latency(
    model: nn.Module,
    *,
    input_shape: tuple[int, int, int],
    cfg: PruneConfig,
    calib_images: np.ndarray,
    deployed: Deployed | None = None,
    loss_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    finetune: Callable[[int], None] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[nn.Module, LatencyResult]:
    """Prune `model` (in place) cfg.latency_step of the channels at a time, at most cfg.ratio
    in all (by cfg.importance, global_pruning, round_to, protect), timing each new candidate
    as `deployed` (None: Deployed()) against the unpruned model, in cfg.latency_rounds
    rounds, until the latency target (cfg.target_latency_ms / target_speedup) is met.

    cfg.target_macs: a MACs target on top of the latency one; candidates above it are not timed.

    finetune(step): KD fine-tuning, after every step (cfg.finetune 'step') or once at the
    end. The returned model is timed once more (twice the rounds) after fine-tuning:
    that final measurement decides `met`.
    """
    from edgekd.prune.channels import PrunePlan, prune_channels

    target = LatencyTarget(latency_ms=cfg.target_latency_ms, speedup=cfg.target_speedup)
    deployed = deployed or Deployed()
    max_ratio, step_ratio, rounds, max_macs = cfg.ratio, cfg.latency_step, cfg.latency_rounds, cfg.target_macs
    int8, bench = deployed.int8, deployed.bench  # PruneConfig holds 0 < latency_step <= ratio < 1
    start = time.perf_counter()
    steps = max(1, math.ceil(max_ratio / step_ratio - 1e-9))
    image = np.ascontiguousarray(calib_images[0], dtype=np.float32)
    result = LatencyResult(target=target.describe(), met=False, format="int8" if int8 else "fp32",
                           reference={"macs": count_macs(model, input_shape), "params": count_params(model)})

    with tempfile.TemporaryDirectory(prefix="edgekd-prune-latency-") as work:
        work = Path(work)

        def deploy(m: nn.Module, name: str) -> Path:
            return export_deployable(m, work / name, input_shape=input_shape, calib_images=calib_images,
                                     int8=int8, quant_cfg=deployed.quant_cfg)[1]

        reference = deploy(model, "reference")
        last_macs = result.reference["macs"]

        def measure(step: int) -> bool:
            """Time the candidate after `step` (when its shape changed); True stops pruning."""
            nonlocal last_macs
            if finetune is not None and cfg.finetune == "step":
                finetune(step)
            macs = count_macs(model, input_shape)
            if macs == last_macs:  # round_to kept every channel count: nothing new to time
                return False
            last_macs = macs
            if max_macs is not None and macs > max_macs:
                log(f"[prune] step {step}: MACs {macs:,} > {max_macs:,}; not timed")
                return False
            candidate = deploy(model, f"step{step}")
            ref_ms, cand_ms = interleaved_p50_ms([reference, candidate], image, bench, rounds=rounds)
            record = {"step": step, "removed": round(step * max_ratio / steps, 4), "macs": macs,
                      "params": count_params(model), "p50_ms": cand_ms, "reference_p50_ms": ref_ms,
                      "speedup": ref_ms / cand_ms, "met": target.met(ref_ms, cand_ms)}
            result.steps.append(record)
            log(f"[prune] step {step}: MACs {macs:,}, {result.format} p50 {cand_ms:.3f} ms vs unpruned "
                f"{ref_ms:.3f} ms ({record['speedup']:.2f}x)")
            return record["met"]

        (ref_ms,) = interleaved_p50_ms([reference], image, bench, rounds=rounds)
        result.reference["p50_ms"] = ref_ms
        small_enough = max_macs is None or result.reference["macs"] <= max_macs
        if target.met(ref_ms, ref_ms) and small_enough:  # e.g. an absolute p50 the model already has
            final_ms = ref_ms
            log(f"[prune] the unpruned model already meets the latency target ({target.describe()}); nothing pruned")
        else:
            plan = PrunePlan.of(cfg, ratio=max_ratio, steps=steps, target_macs=None, target_params=None)
            prune_channels(model, plan, input_shape=input_shape, loss_batch=loss_batch, after_step=None, stop=measure)
            if finetune is not None and cfg.finetune != "step":
                finetune(len(result.steps))
            final = deploy(model, "final")
            ref_ms, final_ms = interleaved_p50_ms([reference, final], image, bench, rounds=2 * rounds)
    result.final = {"macs": count_macs(model, input_shape), "params": count_params(model), "p50_ms": final_ms,
                    "reference_p50_ms": ref_ms, "speedup": ref_ms / final_ms}
    result.met = target.met(ref_ms, final_ms) and (max_macs is None or result.final["macs"] <= max_macs)
    reached = (f"reached {result.format} p50 {final_ms:.3f} ms vs unpruned {ref_ms:.3f} ms "
               f"({ref_ms / final_ms:.2f}x) at {result.final['macs']:,} MACs")
    if result.met:
        result.message = f"latency target met ({target.describe()}): {reached}"
    elif result.steps and result.steps[-1]["met"]:
        result.message = (f"latency target met at step {result.steps[-1]['step']} but not in the final measurement "
                          f"({target.describe()}; twice the rounds, after fine-tuning): {reached}; the machine's "
                          "load may have changed: ask for a little more than you need")
    else:
        result.message = (f"latency target not met ({target.describe()}) after removing up to {max_ratio:g} of the "
                          f"channels: {reached}; raise prune.ratio, or the model is overhead-bound at this size")
    result.seconds = time.perf_counter() - start
    log(f"[prune] {'' if result.met else 'warning: '}{result.message}")
    return model, result
