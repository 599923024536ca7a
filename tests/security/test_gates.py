"""Gates that fit the data: a legitimate model passes, a broken one still fails.

- ONNX-vs-PyTorch parity: |onnx - torch| <= atol + rtol x the row's largest |torch| output,
  so logits of ~600 with a relative error of 3e-7 (a densenet121) pass, a wrong translation
  does not, and the report gives the max absolute and relative differences.
- The accuracy budget knows the val split's size: it never fails on a drop of a few images
  (18 images: one is 5.6 points) and states the smallest difference it can resolve.
- Entropy and percentile calibration work for any number of images, not only multiples of
  quantize.calib_batch_size.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekd.errors import ConfigError, ExportMismatch
from edgekd.onnx_export import (
    PARITY_RTOL,
    ExportConfig,
    parity_diff,
    parity_tolerances,
    to_onnx,
)
from edgekd.quant import budget
from edgekd.quant.calibration import even_batch_size
from edgekd.quant.config import QuantConfig
from edgekd.quant.ptq import ptq

SHAPE = (1, 8, 8)


class ScaledBranch(nn.Module):
    """Traced with the all-zeros export example, the ONNX graph keeps the logits times
    `factor`, while PyTorch returns the logits: a relative error of factor - 1 everywhere."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        logits = x.flatten(1)[:, :3] * 1.0
        if bool((x == 0).all()):
            return logits * self.factor
        return logits


def big_inputs(n: int = 7) -> torch.Tensor:
    """Check inputs whose logits reach several hundred, like a densenet121's."""
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0)) * 300


# -- parity ------------------------------------------------------------------------------------


def test_large_logits_with_a_tiny_relative_error_pass(tmp_path):
    path = tmp_path / "dense.onnx"
    report = to_onnx(ScaledBranch(1.0000003), path, input_shape=SHAPE, metadata={}, cfg=ExportConfig(),
                     check_inputs=big_inputs())
    worst_abs, worst_rel = max(report.max_abs_diff.values()), max(report.max_rel_diff.values())
    assert worst_abs > 1e-4  # the old absolute gate of atol 1e-4 failed this model
    assert worst_rel < 1e-6 and set(report.max_rel_diff) == set(report.max_abs_diff) == {1, 7}
    assert (report.atol, report.rtol) == (1e-4, PARITY_RTOL) and path.is_file()


def test_a_real_mismatch_on_large_logits_still_fails(tmp_path):
    path = tmp_path / "wrong.onnx"
    with pytest.raises(ExportMismatch) as info:
        to_onnx(ScaledBranch(1.001), path, input_shape=SHAPE, metadata={}, cfg=ExportConfig(),
                check_inputs=big_inputs())
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert "(> atol 0.0001)" in message and "of the outputs' magnitude (> rtol 1e-05)" in message
    assert "mistranslates" in message and not path.exists()


def test_parity_diff_by_hand():
    torch_out = np.array([[600.0, -20.0, 0.5], [1.0, 2.0, 0.0]])
    close = torch_out * (1 + 3e-7)
    d = parity_diff(close, torch_out, 1e-4, 1e-5)
    assert d["max_abs_diff"] == pytest.approx(600 * 3e-7) and d["max_rel_diff"] == pytest.approx(3e-7)
    assert d["excess"] < 1 and d["torch_finite"]
    # an element near zero in a row of large logits is judged by the row's magnitude
    off = torch_out.copy()
    off[0, 2] += 5e-3
    assert parity_diff(off, torch_out, 1e-4, 1e-5)["excess"] < 1
    off[0, 2] += 1.0
    assert parity_diff(off, torch_out, 1e-4, 1e-5)["excess"] > 1
    # small logits keep the absolute tolerance
    small = torch_out.copy()
    small[1, 0] += 2e-4
    assert parity_diff(small, torch_out, 1e-4, 1e-5)["excess"] > 1
    # NaN never passes, and NaN in PyTorch's own outputs is named
    nan = torch_out.copy()
    nan[0, 0] = np.nan
    assert math.isnan(parity_diff(nan, torch_out, 1e-4, 1e-5)["excess"])
    assert not parity_diff(nan, nan, 1e-4, 1e-5)["torch_finite"]


@pytest.mark.parametrize("atol, rtol", [(math.inf, 1e-5), (math.nan, 1e-5), (1e-4, math.inf), (1e-4, -1.0)])
def test_no_tolerance_turns_the_gate_off(atol, rtol):
    with pytest.raises(ConfigError):
        parity_tolerances(SimpleNamespace(atol=atol, rtol=rtol))


# -- the accuracy budget -----------------------------------------------------------------------


def test_one_image_of_eighteen_is_not_a_failure():
    one = 100 / 18  # 5.56 points
    assert budget.resolution(18) == pytest.approx(one)
    assert budget.allowed_drop(1.0, 18) == pytest.approx(3 * one)
    for images in (1, 2, 3):
        assert not budget.exceeds_budget(100.0, 100.0 - images * one, 1.0, 18), images
    assert budget.exceeds_budget(100.0, 100.0 - 4 * one, 1.0, 18)
    assert budget.exceeds_budget(100.0, 100.0 - 4 * one, 1.0, None)  # unknown size: max_drop alone


def test_a_large_val_split_keeps_max_drop():
    assert budget.allowed_drop(1.0, 10000) == 1.0
    assert budget.exceeds_budget(90.0, 88.9, 1.0, 10000) and not budget.exceeds_budget(90.0, 89.0, 1.0, 10000)
    assert not budget.exceeds_budget(90.0, 0.0, None, 18)  # no budget
    assert budget.allowed_drop(-100.0, 18) == -100.0  # an explicit demand is taken as given
    assert budget.exceeds_budget(90.0, math.nan, 1.0, 18)


def test_the_budget_states_its_resolution():
    summary = budget.budget_summary(1.0, 18)
    assert summary["val_size"] == 18 and summary["resolution_points"] == pytest.approx(100 / 18)
    assert "5.56" in summary["text"] and "16.7" in summary["text"] and "3 images" in summary["text"]
    assert "no accuracy budget" in budget.budget_summary(None, 18)["text"]


def test_search_with_the_val_size_does_not_search_a_one_image_drop(tmp_path):
    def evaluate(path):
        raise AssertionError("nothing to re-quantize")

    result = budget.search(tmp_path / "missing.onnx", tmp_path / "missing.int8.onnx", cfg=QuantConfig(max_drop=1.0),
                           measured=budget.Measured(fp32_top1=100.0, int8_top1=100.0 - 100 / 18, val_size=18),
                           evaluate=evaluate, ptq_inputs=budget.PtqInputs(calib_images=np.zeros(1)))
    assert result.met and result.excluded == [] and result.allowed_drop == pytest.approx(300 / 18)
    assert result.to_dict()["val_size"] == 18


# -- calibration for every size ----------------------------------------------------------------


def test_even_batch_size():
    assert even_batch_size(40, 32) == 20 and even_batch_size(64, 32) == 32 and even_batch_size(10, 32) == 10
    assert even_batch_size(37, 32) == 1 and even_batch_size(1000, 32) == 25 and even_batch_size(0, 32) == 1
    for count in range(1, 120):
        b = even_batch_size(count, 16)
        assert 1 <= b <= min(count, 16) and count % b == 0


def scales(path) -> dict:
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {n.output[0]: inits[n.input[1]] for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_with_a_partial_last_batch(tmp_path, tiny_onnx, calib_images, method):
    fp32, _ = tiny_onnx
    assert len(calib_images) == 40
    partial = ptq(fp32, tmp_path / "partial.onnx", calib_images=calib_images, progress=False,
                  cfg=QuantConfig(calibration=method, calib_batch_size=32, target="x86-avx2"))
    assert partial.calib_batch_size == 20 and partial.samples == 40
    ptq(fp32, tmp_path / "whole.onnx", calib_images=calib_images, progress=False,
        cfg=QuantConfig(calibration=method, calib_batch_size=40, target="x86-avx2"))
    a, b = scales(tmp_path / "partial.onnx"), scales(tmp_path / "whole.onnx")
    assert a and set(a) == set(b)  # the same histograms: no image padded or dropped
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_prime_number_of_calibration_images(tmp_path, tiny_onnx, calib_images):
    fp32, _ = tiny_onnx
    report = ptq(fp32, tmp_path / "prime.onnx", calib_images=calib_images[:37], progress=False,
                 cfg=QuantConfig(calibration="entropy", calib_batch_size=8, target="x86-avx2"))
    assert report.calib_batch_size == 1 and report.samples == 37


def test_report_md_states_both_gates():
    from edgekd.pipeline.report import gates_section

    stages = {"export": {"student": {"path": "s.onnx", "max_abs_diff": {"1": 2e-4, "7": 3e-4},
                                     "max_rel_diff": {"1": 3e-7, "7": 4e-7}, "atol": 1e-4, "rtol": 1e-5}},
              "quantize": {"val_top1_fp32": 100.0, "val_top1_int8": 100 - 100 / 18, "max_drop": 1.0,
                           "budget_resolution": budget.budget_summary(1.0, 18)}}
    text = "\n".join(gates_section(stages))
    assert "## Gates" in text and "student: max |onnx - torch| 0.0003, 4e-07 of the outputs' magnitude" in text
    assert "0.0001 + 1e-05 x the row's largest |output|" in text
    assert "drop 5.56 points" in text and "one val image of 18 is 5.56 top-1 points" in text
    assert gates_section({}) == [] and gates_section({"export": {"seconds": 1.0}}) == []
