"""Quantization-aware training: batch-norm folding, fake quantization against hand-computed
int8 values, the straight-through gradient, export parity with ONNX Runtime, int8 kernels
after ONNX Runtime's optimization, and one `edgekd compress` with quantize.method: qat."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekd.errors import ConfigError
from edgekd.models.inference import fold_batchnorm
from edgekd.models.zoo import build_model
from edgekd.quant.qat.export import export_qdq
from edgekd.quant.qat.prepare import (
    ActivationQuant,
    QuantConv2d,
    QuantLinear,
    SharedQuant,
    activation_quantizers,
    fake_quant_weight,
    prepare_qat,
    weight_scale,
)
from edgekd.quant.qat.train import calibrate
from edgekd.recipe import Recipe
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.session import INT8_OPS, QDQ_OPS, make_session, optimized_op_counts

INPUT_SHAPE = (1, 8, 8)  # as in conftest: 1x8x8 images of 3 classes
NUM_CLASSES = 3


def _with_bn_statistics(model, images):
    """Run a few train-mode batches so the batch norms have non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            model(images[i : i + 16])
    return model.eval()


# -- batch-norm folding --------------------------------------------------------------


def test_fold_batchnorm_hand_values():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
    bn = nn.BatchNorm2d(2, eps=0.0).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    folded = fold_batchnorm(conv, bn)
    # factor = gamma / sqrt(var) = [0.5, 4]; w' = w * factor; b' = beta - mean * factor
    assert folded.weight.flatten().tolist() == [1.0, -4.0]
    assert folded.bias.tolist() == [0.0, 4.0]
    x = torch.tensor([[[[3.0]]]])  # conv: [6, -3]; bn: [(6-1)/2+0.5, (-3+1)*4] = [3, -8]
    assert folded(x).flatten().tolist() == [3.0, -8.0] == bn(conv(x)).flatten().tolist()


def test_folded_conv_equals_conv_then_bn_in_eval():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(5)
    _with_bn_statistics(nn.Sequential(conv, bn), torch.randn(64, 3, 9, 9) * 3 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_prepare_qat_structure(make_tiny_cnn, tiny_images):
    float_model = _with_bn_statistics(make_tiny_cnn(), tiny_images(32) * 2)
    q = prepare_qat(float_model)
    modules = list(q.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert sum(isinstance(m, QuantConv2d) for m in modules) == 3
    assert sum(isinstance(m, QuantLinear) for m in modules) == 1
    # input, the three ReLU outputs, the pooled features; the same ranges again after each
    # MaxPool and the Flatten (a Q -> DQ right before the next Conv/Gemm, as ORT's quantizer writes)
    assert len(activation_quantizers(q)) == 5
    assert sum(isinstance(m, SharedQuant) for m in modules) == 3
    # every conv and the linear know the quantizer that feeds them (for the int32 bias grid)
    assert all(m.input_quant for m in modules if isinstance(m, (QuantConv2d, QuantLinear)))
    # not calibrated yet: the activation quantizers pass values through, so this is the folded
    # model with int8 weights (~0.4% relative error per weight): close to the float model's logits
    x = tiny_images(6, seed=1)
    with torch.no_grad():
        expected = float_model(x)
        assert (q.eval()(x) - expected).abs().max() <= 0.02 * expected.abs().max()
    assert any(isinstance(m, nn.BatchNorm2d) for m in float_model.modules())  # the original is untouched


def test_prepare_qat_rejects_untraceable_model():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(ConfigError, match="torch.fx"):
        prepare_qat(Branchy())


# -- fake quantization ----------------------------------------------------------------


def _calibrated(activation_type, lo=-1.0, hi=1.55):
    q = ActivationQuant(activation_type).train()
    q(torch.tensor([lo, 0.3, hi]))  # the first batch sets the range
    return q.eval()


@pytest.mark.parametrize("activation_type,qmin,zero_point", [("uint8", 0, 100), ("int8", -128, -28)])
def test_activation_fake_quant_hand_values(activation_type, qmin, zero_point):
    q = _calibrated(activation_type)
    # range [-1, 1.55]: scale = 2.55 / 255 = 0.01; zero point = qmin + 1 / 0.01 = qmin + 100
    assert float(q.scale) == pytest.approx(0.01, rel=1e-6)
    assert int(q.zero_point) == zero_point
    x = torch.tensor([0.123, -0.456, 5.0, -3.0, 0.0])
    # round(12.3) = 12; round(-45.6) = -46; 500 clamps to qmax (1.55); -300 clamps to qmin (-1.0); 0 is exact
    expected = torch.tensor([0.12, -0.46, 1.55, -1.0, 0.0])
    torch.testing.assert_close(q(x), expected, atol=1e-6, rtol=0)
    # the integer codes themselves, as ONNX Runtime stores them
    codes = torch.round(x / q.scale) + q.zero_point
    assert torch.clamp(codes, qmin, qmin + 255).tolist() == [zero_point + 12, zero_point - 46, qmin + 255, qmin,
                                                              zero_point]


def test_activation_range_always_contains_zero_and_caps_relu6():
    q = ActivationQuant("uint8", max_value=6.0).train()
    q(torch.tensor([0.5, 9.0]))  # min 0.5 -> 0 (zero must be exact); max 9 -> 6 after a ReLU6
    assert int(q.zero_point) == 0
    assert float(q.scale) == pytest.approx(6.0 / 255)


def test_moving_average_then_frozen():
    q = ActivationQuant("uint8").train()
    q(torch.tensor([0.0, 1.0]))
    q(torch.tensor([0.0, 2.0]))  # max: 1 + 0.01 * (2 - 1)
    assert float(q.max_val) == pytest.approx(1.01)
    q.observing.fill_(False)
    q(torch.tensor([0.0, 100.0]))
    assert float(q.max_val) == pytest.approx(1.01)


def test_weight_fake_quant_per_channel_hand_values():
    w = torch.tensor([[0.504, -1.27, 0.3], [0.021, 0.01, -0.04]]).view(2, 3, 1, 1)
    scale = weight_scale(w)
    torch.testing.assert_close(scale, torch.tensor([0.01, 0.04 / 127]))
    q = fake_quant_weight(w, scale).flatten(1)
    # channel 0: 50.4 -> 50, -127, 30; channel 1: 66.675 -> 67, 31.75 -> 32, -127
    torch.testing.assert_close(q[0], torch.tensor([0.50, -1.27, 0.30]), atol=1e-6, rtol=0)
    torch.testing.assert_close(q[1], torch.tensor([67, 32, -127]) * (0.04 / 127), atol=1e-7, rtol=0)


def test_straight_through_gradient():
    q = _calibrated("uint8")
    x = torch.tensor([-2.0, -0.5, 0.0, 0.77, 1.5, 3.0], requires_grad=True)
    (q(x) * torch.arange(1.0, 7.0)).sum().backward()
    # gradient passes unchanged inside [-1, 1.55] and is 0 where the value is clamped
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    fake_quant_weight(w, weight_scale(w)).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# -- export --------------------------------------------------------------------------


def _qat_model(arch, tiny_images, **arch_args):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES, **arch_args)
    _with_bn_statistics(model, tiny_images(48, seed=2) * 1.5)
    q = prepare_qat(model)
    calibrate(q, tiny_images(64, seed=3))
    return q.eval()


@pytest.mark.parametrize("arch,arch_args,fused", [
    ("tinycnn", {"width": 4}, {"QLinearConv": 3, "QGemm": 1, "QLinearGlobalAveragePool": 1}),
    ("resnet8", {"width": 0.5}, {"QLinearConv": 9, "QLinearAdd": 3, "QGemm": 1, "QLinearGlobalAveragePool": 1}),
])
def test_export_parity_and_int8_kernels(tmp_path, tiny_images, arch, arch_args, fused):
    q = _qat_model(arch, tiny_images, **arch_args)
    path = tmp_path / "qat.onnx"
    export_qdq(q, path, input_shape=INPUT_SHAPE, metadata={"edgekd.stage": "int8"})
    x = tiny_images(128, seed=4)
    with torch.no_grad():
        expected = q(x).numpy()
    (got,) = make_session(path, BenchConfig(threads=1)).run(None, {"input": x.numpy()})
    # ONNX Runtime's integer kernels compute what the fake-quant model simulates; they can differ
    # by one requantization step where a value falls on a rounding tie (QLinearAdd), nowhere more
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.97
    ops = optimized_op_counts(path, BenchConfig(threads=1))
    for op, count in fused.items():
        assert ops.get(op) == count, ops
    # nothing float is left to compute: only the input's QuantizeLinear and layout Transposes
    assert not {"Conv", "FusedConv", "Add", "Gemm", "MatMul", "DequantizeLinear"} & set(ops), ops
    assert ops.get("QuantizeLinear") == 1 and sum(ops.get(op, 0) for op in QDQ_OPS) == 1
    assert sum(c for op, c in ops.items() if op in INT8_OPS) >= sum(fused.values())


def test_export_stores_int8_weights_and_int32_biases(tmp_path, tiny_images):
    q = _qat_model("tinycnn", tiny_images, width=4)
    path = tmp_path / "qat.onnx"
    export_qdq(q, path, input_shape=INPUT_SHAPE, metadata={"edgekd.stage": "int8", "edgekd.arch": "tinycnn"})
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == 4
    conv_modules = [m for m in q.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    for node, module in zip(convs, conv_modules):
        w_dq, b_dq, x_dq = (producers[node.input[i]] for i in (1, 2, 0))
        weight, w_scale = inits[w_dq.input[0]], inits[w_dq.input[1]]
        assert weight.dtype == np.int8 and np.abs(weight).max() == 127  # symmetric: each channel's max is 127
        np.testing.assert_allclose(w_scale, weight_scale(module.weight).numpy(), rtol=1e-6)
        bias, b_scale = inits[b_dq.input[0]], inits[b_dq.input[1]]
        assert bias.dtype == np.int32
        np.testing.assert_allclose(b_scale, inits[x_dq.input[1]] * w_scale, rtol=1e-6)  # s_in * s_w
    assert not [n for n, a in inits.items() if a.dtype == np.float32 and a.size > 64]  # no float weights left
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgekd.arch"] == "tinycnn" and meta["edgekd.stage"] == "int8"


def test_export_before_calibration_is_a_config_error(tmp_path, make_tiny_cnn):
    with pytest.raises(ConfigError, match="calibrate"):
        export_qdq(prepare_qat(make_tiny_cnn()), tmp_path / "x.onnx", input_shape=INPUT_SHAPE, metadata={})


# -- recipe and the end-to-end run -----------------------------------------------------


def test_recipe_qat_fields_and_errors():
    r = Recipe.from_dict({"quantize": {"method": "qat", "qat": {"epochs": 1, "observe_fraction": 0.25}}})
    assert r.quantize.method == "qat" and r.quantize.qat.epochs == 1 and r.quantize.qat.observe_fraction == 0.25
    assert Recipe.from_dict({}).quantize.method == "ptq"
    for bad, message in (({"method": "awq"}, "unknown quantize.method 'awq'"),
                         ({"qat": {"observe_fraction": 1.5}}, "observe_fraction must be between 0 and 1"),
                         ({"qat": {"lr": 0}}, "quantize.qat.lr must be positive"),
                         ({"qat": {"steps": 3}}, "unknown key 'quantize.qat.steps'"),
                         ({"method": "qat", "per_channel": False}, "per-channel int8 weights"),
                         ({"method": "qat", "exclude_op_types": ["Gemm"]}, "method ptq")):
        with pytest.raises(ConfigError, match=message):
            Recipe.from_dict({"quantize": bad})


QAT_RECIPE = """\
name: qat
seed: 1
data: {name: fashion-mnist-subset, limit_train: 600, limit_test: 200, calib_size: 64}
teacher: {arch: tinycnn, arch_args: {width: 8}, epochs: 3, batch_size: 32, lr: 0.01, augment: false}
distill: {arch: tinycnn, arch_args: {width: 4}, epochs: 3, batch_size: 32, lr: 0.01, augment: false}
quantize: {method: qat, max_drop: null, qat: {epochs: 1, batch_size: 32, lr: 0.001}}
bench: {warmup: 2, runs: 20, min_seconds: 0.0}
"""


def test_compress_with_qat_end_to_end(tmp_path):
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_RECIPE)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "edgekd", "compress", str(recipe), "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    quantize = report["stages"]["quantize"]
    assert quantize["method"] == "qat" and quantize["format"] == "QDQ U8S8 (QAT)"
    assert quantize["qat"]["steps"] == 17 and quantize["qat"]["observe_steps"] == 8  # 540 images / 32, half observing
    for key in ("val_top1_int8", "val_top1_fake_quant", "val_top1_fp32"):
        assert 0.0 <= quantize[key] <= 100.0
    int8 = next(m for m in report["models"] if m["stage"] == "int8")
    assert int8["int8_ops"] >= 5 and int8["qdq_nodes"] == 1 and int8["samples"] == 200
    assert int8["top1"] > 30.0  # 10 classes: well above chance
    # the deployed model and the fake-quant model it was exported from agree on val (60 images)
    assert abs(quantize["val_top1_int8"] - quantize["val_top1_fake_quant"]) <= 100 / 60 + 1e-6
    assert "| method | qat |" in (out / "report.md").read_text()  # the quantize stage's rows
