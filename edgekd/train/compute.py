"""Where and how training computes: the device (auto, cpu, cuda[:N]), the precision
(auto, fp32, bf16, fp16) and the memory layout (channels_last), resolved once per run.

- device auto: CUDA when torch sees a GPU, else the CPU; `cuda` without one is a
  ConfigError (exit 2), never a silent CPU run.
- precision auto: on CUDA bf16 where the GPU supports it, else fp16 with a GradScaler; on a
  CPU with AVX512-BF16 or AMX-BF16, bf16 autocast (oneDNN's bf16 kernels); else fp32.
  Autocast keeps the weights, the optimizer and the loss's reductions in fp32.
- channels_last auto: on (oneDNN and cuDNN pick blocked/NHWC kernels for convolutions; on
  this project's Xeon a ResNet-8 step ran 1.4x faster in fp32 and 1.1x in bf16 than in NCHW).
- threads auto: the CPUs this process may use, re-measured by the training loop on its own
  steps (edgekd.train.threads); a number as given.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Optional

from edgekd.errors import ConfigError
from edgekd.train.threads import ThreadChoice, choose

DEVICES = ("auto", "cpu", "cuda")  # cuda may carry an index: cuda:1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAYOUTS = ("auto", True, False)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_device_name(device: str) -> None:
    """A device name's syntax (recipe validation; whether it exists is `resolve_device`'s)."""
    base, _, index = str(device).partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class Compute:
    """The resolved device, precision and layout of a run's training."""

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    recompute_batch_norm: bool | str = "auto"  # after each epoch; auto: models from torchvision/timm
    # the run's thread count (edgekd.train.threads), changed by auto as it re-measures; None:
    # torch's and ONNX Runtime's own settings are left alone (outside a run)
    threads: Optional[ThreadChoice] = field(default=None, compare=False)

    def recomputes_batch_norm(self, model) -> bool:
        """Whether the training loop recomputes `model`'s batch-norm statistics after each
        epoch: auto does for models built from torchvision: or timm: (edgekd.models.adapt
        marks them), which predicted one class in eval mode after short schedules."""
        if self.recompute_batch_norm == "auto":
            from edgekd.models.adapt import built_externally

            return built_externally(model)
        return bool(self.recompute_batch_norm)

    @property
    def device_type(self) -> str:
        return self.device.partition(":")[0]

    @property
    def dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """The context a forward pass runs in: autocast to bf16/fp16, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """A GradScaler for fp16 on CUDA (bf16 has fp32's range and needs none), else None."""
        if self.precision != "fp16" or self.device_type != "cuda":
            return None
        import torch

        return torch.amp.GradScaler("cuda")

    def model(self, model):
        """`model` moved to the device (and layout), in place."""
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return model.to(device=self.device, memory_format=fmt)

    def batch(self, x):
        """An input batch on the device, in the layout."""
        import torch

        if self.device_type == "cuda":
            x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def to_dict(self) -> dict:
        return {"device": self.device, "precision": self.precision, "channels_last": self.channels_last}

    def holds(self, model) -> bool:
        """Whether `model` is already on the device, in the layout (a 4-D weight tells)."""
        import torch

        params = list(model.parameters())
        if not params:
            return True
        if str(params[0].device) != (self.device if self.device_type == "cuda" else "cpu"):
            return False
        conv = next((p for p in params if p.dim() == 4), None)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return conv is None or conv.is_contiguous(memory_format=fmt)

    @contextlib.contextmanager
    def borrowed(self, model):
        """`model` on the device and in the layout for the block, and back as it was after
        (a model that was already there stays)."""
        if self.holds(model):
            yield model
            return
        self.model(model)
        try:
            yield model
        finally:
            self.leave(model)

    def leave(self, model):
        """`model` back on the CPU in the standard layout: what saving, export and ONNX expect."""
        import torch

        return model.to(device="cpu", memory_format=torch.contiguous_format)


# The run's compute, set once by the chain (`with use(compute):`) and read by the training
# loop and predictions, so every stage that trains (teacher, distill, its schemes, prune's
# fine-tuning, QAT, transfer) computes the same way without each passing it on. Outside a
# run: the CPU in fp32 NCHW, what the functions did before there was a choice.
OUTSIDE_A_RUN = Compute()
_CURRENT = contextvars.ContextVar("edgekd_compute")


def current() -> Compute:
    return _CURRENT.get(OUTSIDE_A_RUN)


def session_threads() -> int:
    """ONNX Runtime's intra-op threads for edgekd's own sessions during a run (calibration,
    the budget search, val accuracy): the run's current count; 0 (ONNX Runtime's default)
    outside a run or where the run sets none. Not for `edgekd bench`."""
    choice = current().threads
    return 0 if choice is None else choice.count


@contextlib.contextmanager
def use(compute: Compute):
    """`compute` for the block; with a thread choice, torch computes with its count (the
    training loop changes it as auto re-measures) and gets its earlier count back after."""
    token = _CURRENT.set(compute)
    before = None
    if compute.threads is not None:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(compute.threads.count)
    try:
        yield compute
    finally:
        _CURRENT.reset(token)
        if before is not None:
            torch.set_num_threads(before)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda:0' when torch sees a GPU, else 'cpu'; 'cuda[:N]' must exist."""
    import torch

    check_device_name(device)
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' asked for, but torch sees no CUDA GPU here; use --device cpu "
                              "or auto, or install a CUDA build of torch on a machine with a GPU")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}' does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
        return f"cuda:{index}"
    return "cpu"


def cpu_has_bf16() -> bool:
    from edgekd.runtime.machine import cpu_flags

    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> bf16 / fp16 / fp32 for this device (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; available: {', '.join(PRECISIONS)}")
    if device.startswith("cuda"):
        import torch

        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16":
        raise ConfigError("precision fp16 is for CUDA; on the CPU use bf16 (or auto)")
    return precision


def resolve(device: str = "auto", precision: str = "auto", channels_last="auto",
            recompute_batch_norm="auto", threads=None) -> Compute:
    """The Compute for a recipe's device and train section (precision, channels_last,
    recompute_batch_norm, threads: auto or a number; None leaves the thread counts alone)."""
    resolved_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, resolved_device)
    if channels_last == "auto":
        channels_last = True
    return Compute(device=resolved_device, precision=resolved_precision, channels_last=bool(channels_last),
                   recompute_batch_norm=recompute_batch_norm,
                   threads=None if threads is None else choose(threads))
