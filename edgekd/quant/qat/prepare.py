"""Quantization-aware training (QAT): fine-tune the student with the int8 arithmetic it
will be deployed with, then export it as a QDQ ONNX model that ONNX Runtime runs with
int8 kernels.

    prepare_qat(student)        batch norm folded into the convolutions; fake quantization
                                inserted (torch.fx): per-channel symmetric int8 weights,
                                per-tensor uint8 (or int8) activations
    calibrate(qmodel, images)   first activation ranges (moving-average min/max)
    qat(qmodel, teacher, ...)   KD fine-tuning with train.fit; the ranges keep following a
                                moving average for the first part of the steps, then freeze
    export.export_qdq(...)      torch.onnx.export maps each fake quantization to
                                QuantizeLinear -> DequantizeLinear; the weights are then
                                stored as int8 and the biases as int32 (scale s_in * s_w),
                                as ONNX Runtime's own quantizer writes them

The scheme matches what ONNX Runtime executes: a Conv reads a dequantized uint8 input and
int8 weights, adds an int32 bias and requantizes its output (a ReLU after it is folded
into the output range, zero point 0); the fake-quant model computes the same values in
float, with a straight-through estimator for the rounding (gradient 1 inside the range,
0 where the value is clamped). torch.ao.quantization is not used (deprecated); the fake
quantization is torch.fake_quantize_per_tensor_affine / _per_channel_affine, which the
ONNX exporter translates one to one.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgekd.errors import ConfigError
from edgekd.models.inference import deployed_graph, fold_batchnorms

ACTIVATION_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127] (ONNX Runtime's quantizer does too)


INT32_MAX = 2**31 - 1


EMA_MOMENTUM = 0.01  # weight of a new batch's min/max in the moving average (PyTorch's default)


# modules and functions after which a new activation range starts (their output is quantized)
_RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


_RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.hardtanh)


_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)


_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.avg_pool2d)


_ADD_FUNCTIONS = (operator.add, torch.add, operator.iadd)


# ops that only move or select values: a quantized input stays on the same int8 grid
_PASS_THROUGH_MODULES = (nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)


_PASS_THROUGH_FUNCTIONS = (torch.flatten, F.max_pool2d, torch.reshape)


_PASS_THROUGH_METHODS = ("view", "reshape", "flatten")


def weight_scale(weight: torch.Tensor, qmax: int = WEIGHT_QMAX) -> torch.Tensor:
    """Per output channel: max |w| / qmax (symmetric int8, zero point 0; qmax 63 with
    reduce_range, the 7-bit weights that keep AVX2's vpmaddubsw from saturating)."""
    absmax = weight.detach().abs().flatten(1).amax(1)
    return torch.clamp(absmax / qmax, min=1e-12).float()


def fake_quant_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round each output channel to its int8 grid; gradient straight through. The range is
    [-128, 127] for the exporter (it knows no [-127, 127]); |w / scale| <= 127 never uses -128."""
    zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -128, 127)


def fake_quant_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round the bias to the int32 grid s_in * s_w that ONNX Runtime's integer kernels add it on
    (straight-through gradient)."""
    q = torch.clamp(torch.round(bias / scale), -INT32_MAX, INT32_MAX) * scale
    return bias + (q - bias).detach()


class ActivationQuant(nn.Module):
    """Per-tensor affine fake quantization of an activation (uint8 or int8).

    The range is a moving average of each batch's min and max while `observing` (training
    mode only), always widened to contain 0 (zero must be exact: padding and ReLU);
    `max_value` caps it (6 after a ReLU6). scale = (max - min) / (qmax - qmin),
    zero point = round(qmin - min / scale)."""

    def __init__(self, activation_type: str = "uint8", max_value: float | None = None):
        super().__init__()
        self.qmin, self.qmax = ACTIVATION_RANGES[activation_type]
        self.max_value = max_value
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("observing", torch.tensor(True))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().float(), x.max().float()
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.add_(EMA_MOMENTUM * (lo - self.min_val))
            self.max_val.add_(EMA_MOMENTUM * (hi - self.max_val))
        scale, zero_point = self.qparams(float(self.min_val), float(self.max_val))
        self.scale.fill_(scale)
        self.zero_point.fill_(zero_point)

    def qparams(self, lo: float, hi: float) -> tuple[float, int]:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.max_value is not None:
            hi = min(hi, self.max_value)
        scale = max((hi - lo) / (self.qmax - self.qmin), 1e-8)
        zero_point = int(np.clip(round(self.qmin - lo / scale), self.qmin, self.qmax))
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and bool(self.observing):
            self.observe(x)
        if not bool(self.initialized):  # no range yet (before calibration): pass through
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"qmin={self.qmin}, qmax={self.qmax}, max_value={self.max_value}"


class SharedQuant(nn.Module):
    """Fake quantization with another ActivationQuant's range, after ops that only move values
    (Flatten, MaxPool): the values are already on that grid, so this changes nothing here, but
    in ONNX the Q -> DQ pair it exports lets ONNX Runtime feed the next Conv/Gemm int8 directly,
    as its own quantizer's models do."""

    def __init__(self, source: ActivationQuant):
        super().__init__()
        self.source = [source]  # a list: not a submodule, its buffers stay the source's

    def forward(self, x):
        q = self.source[0]
        if not bool(q.initialized):
            return x
        return torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, q.qmin, q.qmax)


class _WeightQuantMixin:
    """Per-channel int8 weights, and the bias on the int32 grid of its input's scale."""

    weight_qmax: int = WEIGHT_QMAX

    @classmethod
    def copy_of(cls, module: nn.Module, *args, **kwargs):
        """A quantizing copy of a float `module`, built with `args`, with its weights."""
        q = cls(*args, **kwargs)
        q.load_state_dict(module.state_dict())
        q.input_quant = []
        return q

    def quantized_weight_and_bias(self):
        frozen = getattr(self, "frozen_scale", None)
        if frozen is not None:  # export: the weights are final, the bias already rounded
            return fake_quant_weight(self.weight, frozen), self.bias
        scale = weight_scale(self.weight, self.weight_qmax)
        weight = fake_quant_weight(self.weight, scale)
        bias = self.bias
        source = self.input_quant[0] if self.input_quant else None
        if bias is not None and source is not None and bool(source.initialized):
            bias = fake_quant_bias(bias, source.scale * scale)
        return weight, bias


class QuantConv2d(_WeightQuantMixin, nn.Conv2d):
    input_quant: list  # [the ActivationQuant whose output this conv reads], or []

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "QuantConv2d":
        return cls.copy_of(conv, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)

    def forward(self, x):
        weight, bias = self.quantized_weight_and_bias()
        return self._conv_forward(x, weight, bias)


class QuantLinear(_WeightQuantMixin, nn.Linear):
    input_quant: list

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "QuantLinear":
        return cls.copy_of(linear, linear.in_features, linear.out_features, bias=linear.bias is not None)

    def forward(self, x):
        weight, bias = self.quantized_weight_and_bias()
        return F.linear(x, weight, bias)


def prepare_qat(model: nn.Module, *, activation_type: str = "uint8", reduce_range: bool = False
                ) -> torch.fx.GraphModule:
    """A QAT copy of `model` (left unchanged): every Conv2d -> BatchNorm2d pair folded into
    one QuantConv2d, every Linear a QuantLinear, and an ActivationQuant after the input and
    after each op that starts a new activation range (conv, linear, add, ReLU/ReLU6, average
    pooling; after the ReLU when one follows). The result is in train mode, not yet calibrated."""
    if activation_type not in ACTIVATION_RANGES:
        raise ConfigError(f"QAT activation type must be uint8 or int8, got '{activation_type}'")
    try:
        gm = deployed_graph(model)  # RepConv branches fused: QAT learns the deployed kernels
    except Exception as exc:  # fx raises many types for dynamic control flow
        raise ConfigError(f"QAT needs a model torch.fx can trace ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); use quantize.method: ptq") from exc
    fold_batchnorms(gm)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(modules[node.target]) in (nn.Conv2d, nn.Linear):
            float_module = modules[node.target]
            quant = (QuantConv2d if isinstance(float_module, nn.Conv2d) else QuantLinear).from_float(float_module)
            quant.weight_qmax = 63 if reduce_range else WEIGHT_QMAX
            gm.set_submodule(node.target, quant)
    modules = dict(gm.named_modules())
    leftover = [name for name, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ConfigError(f"QAT folds batch norm into the convolution before it; {', '.join(leftover)} "
                          "does not follow a Conv2d: use quantize.method: ptq for this model")
    count = 0
    for node in list(gm.graph.nodes):
        if not _starts_range(node, modules) or _followed_by_relu(node, modules):
            continue
        if node.op != "placeholder" and all(user.op == "output" for user in node.users):
            continue  # the logits stay float
        name = f"act_quant_{count}"
        count += 1
        gm.add_submodule(name, ActivationQuant(activation_type, max_value=_relu_cap(node, modules)))
        with gm.graph.inserting_after(node):
            quant_node = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(quant_node, delete_user_cb=lambda user, new=quant_node: user is not new)
    gm.graph.lint()
    gm.recompile()
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):  # each conv / linear learns which quantizer feeds it (for its bias)
        if node.op == "call_module" and isinstance(modules[node.target], (QuantConv2d, QuantLinear)):
            producer = _input_quantizer(node.args[0], modules)
            modules[node.target].input_quant = [producer] if producer is not None else []
            arg = node.args[0]
            if producer is not None and not (arg.op == "call_module" and modules[arg.target] is producer):
                name = f"act_quant_{count}"  # a Flatten or MaxPool between: requantize right before
                count += 1
                gm.add_submodule(name, SharedQuant(producer))
                with gm.graph.inserting_before(node):
                    shared = gm.graph.call_module(name, (arg,))
                node.args = (shared, *node.args[1:])
    gm.graph.lint()
    gm.recompile()
    return gm.train()


def _is_relu(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _RELU_MODULES)
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS


def _relu_cap(node, modules) -> float | None:
    """6 after a ReLU6 (the range never needs more; ONNX Runtime then drops the Clip)."""
    if node.op == "call_module" and isinstance(modules[node.target], nn.Hardtanh):
        return float(modules[node.target].max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 6.0
    return None


def _starts_range(node, modules) -> bool:
    if node.op == "placeholder":
        return True
    if node.op == "call_module":
        return isinstance(modules[node.target], (QuantConv2d, QuantLinear, *_RELU_MODULES, *_POOL_MODULES))
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS or node.target in _POOL_FUNCTIONS or node.target in _ADD_FUNCTIONS
    return False


def _followed_by_relu(node, modules) -> bool:
    return len(node.users) == 1 and _is_relu(next(iter(node.users)), modules)


def _input_quantizer(arg, modules) -> ActivationQuant | None:
    """The ActivationQuant whose output reaches a conv/linear input through pass-through ops."""
    while isinstance(arg, torch.fx.Node):
        if arg.op == "call_module":
            module = modules[arg.target]
            if isinstance(module, ActivationQuant):
                return module
            if not isinstance(module, _PASS_THROUGH_MODULES):
                return None
        elif arg.op == "call_function" and arg.target not in _PASS_THROUGH_FUNCTIONS:
            return None
        elif arg.op == "call_method" and arg.target not in _PASS_THROUGH_METHODS:
            return None
        elif arg.op not in ("call_module", "call_function", "call_method"):
            return None
        arg = arg.args[0]
    return None


def activation_quantizers(model: nn.Module) -> list[ActivationQuant]:
    return [m for m in model.modules() if isinstance(m, ActivationQuant)]


def set_observing(model: nn.Module, observing: bool) -> None:
    """Let the activation ranges follow the data (True) or freeze them (False)."""
    for q in activation_quantizers(model):
        q.observing.fill_(observing)
