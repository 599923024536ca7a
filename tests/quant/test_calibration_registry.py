"""The calibration-method extension point: a calibrator registered from outside edgekd is
valid in a recipe (quantize.calibration) and its ranges are the ones the int8 model uses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekd.errors import ConfigError
from edgekd.quant.calibration import CALIBRATORS, Calibrator
from edgekd.quant.config import QuantConfig
from edgekd.quant.ptq import ptq
from edgekd.recipe import Recipe

LOW, HIGH = -2.0, 6.0  # the toy's range for every tensor: uint8 scale 8/255, zero point 64
VNNI = {"arch": "x86_64", "flags": ["avx2", "avx512_vnni"]}  # uint8 activations, int8 weights


@pytest.fixture
def toy():
    """A ranges calibrator registered as 'toy' (every tensor gets LOW..HIGH); it records what
    it was given. Unregistered afterwards."""
    calls = []

    def fixed_range(batches):
        seen = [{name: x.shape for name, x in tensors.items()} for tensors in batches]
        calls.append({"names": list(batches.names), "batches": seen})
        return {name: (LOW, HIGH) for name in batches.names}

    CALIBRATORS.register("toy", fixed_range)
    yield calls
    CALIBRATORS.unregister("toy")


@pytest.fixture
def minmax_clone():
    """A ranges calibrator that computes what ONNX Runtime's MinMax does: each tensor's
    smallest and largest value over all calibration batches."""

    def clone(batches):
        low, high = {}, {}
        for tensors in batches:
            for name, x in tensors.items():
                low[name] = min(low.get(name, np.inf), float(x.min()))
                high[name] = max(high.get(name, -np.inf), float(x.max()))
        return {name: (low[name], high[name]) for name in batches.names}

    CALIBRATORS.register("minmax-clone", Calibrator(ranges=clone))
    yield
    CALIBRATORS.unregister("minmax-clone")


def qdq_params(path, op_type="QuantizeLinear"):
    """{(op output tensor, 'scale' | 'zero_point'): value} of the Q (or DQ) nodes."""
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    return {(n.output[0], role): numpy_helper.to_array(inits[name]) for n in proto.graph.node
            if n.op_type == op_type for role, name in zip(("scale", "zero_point"), n.input[1:3]) if name in inits}


def test_toy_calibrator_from_a_recipe_sets_the_qdq_scales(tmp_path, tiny_onnx, calib_images, toy):
    recipe = Recipe.from_dict({"quantize": {"calibration": "toy", "target": "x86-vnni", "calib_batch_size": 16}})
    assert recipe.quantize.calibration == "toy"
    out = tmp_path / "toy.int8.onnx"
    report = ptq(tiny_onnx[0], out, calib_images=calib_images, cfg=recipe.quantize, progress=False, machine=VNNI)
    assert report.calibration == "toy" and report.activation_type == "uint8"

    # the toy saw every float activation, batch by batch: 40 images in batches of 16
    (call,) = toy
    assert "input" in call["names"] and len(call["names"]) > 5
    assert [shapes["input"][0] for shapes in call["batches"]] == [16, 16, 8]
    assert all(set(shapes) == set(call["names"]) for shapes in call["batches"])

    # every activation QuantizeLinear uses the toy's range
    params = qdq_params(out)
    scales = [v for (_, role), v in params.items() if role == "scale"]
    zero_points = [v for (_, role), v in params.items() if role == "zero_point"]
    assert len(scales) >= 4
    assert all(np.isclose(s, (HIGH - LOW) / 255, rtol=1e-6) for s in scales)
    assert all(z == round(-LOW / ((HIGH - LOW) / 255)) for z in zero_points)


def test_a_ranges_calibrator_computing_minmax_gives_the_built_in_model(tmp_path, tiny_onnx, calib_images,
                                                                        minmax_clone):
    """The ranges path (edgekd's activation batches -> TensorsData -> ONNX Runtime's QDQ
    quantizer) makes the same model as quantize_static with CalibrationMethod.MinMax."""
    paths = {}
    for name in ("minmax", "minmax-clone"):
        paths[name] = tmp_path / f"{name}.onnx"
        ptq(tiny_onnx[0], paths[name], calib_images=calib_images, progress=False, machine=VNNI,
            cfg=QuantConfig(calibration=name, target="x86-vnni"))
    for op_type in ("QuantizeLinear", "DequantizeLinear"):
        built_in, clone = qdq_params(paths["minmax"], op_type), qdq_params(paths["minmax-clone"], op_type)
        assert set(built_in) == set(clone) and built_in
        for key in built_in:
            assert np.array_equal(built_in[key], clone[key]), key
    a, b = onnx.load(str(paths["minmax"])), onnx.load(str(paths["minmax-clone"]))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert all(np.array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))
               for x, y in zip(a.graph.initializer, b.graph.initializer))


def test_unknown_method_lists_the_registered_ones(toy):
    with pytest.raises(ConfigError, match="unknown quantize.calibration 'kl'; available: minmax, entropy, "
                                          "percentile, toy"):
        Recipe.from_dict({"quantize": {"calibration": "kl"}})


@pytest.mark.parametrize("result, message", [
    ({}, "missing: "),
    ("not a mapping", "must return"),
    (None, "must return"),
])
def test_bad_ranges_are_config_errors(tmp_path, tiny_onnx, calib_images, result, message):
    CALIBRATORS.register("broken", lambda batches: result)
    try:
        with pytest.raises(ConfigError, match=message):
            ptq(tiny_onnx[0], tmp_path / "x.onnx", calib_images=calib_images, progress=False, machine=VNNI,
                cfg=QuantConfig(calibration="broken"))
    finally:
        CALIBRATORS.unregister("broken")
    assert not (tmp_path / "x.onnx").exists()


def test_calibrator_entries_are_checked():
    with pytest.raises(ValueError, match="either ort_method"):
        Calibrator()
    with pytest.raises(ValueError, match="either ort_method"):
        Calibrator(ort_method="MinMax", ranges=lambda batches: {})
    with pytest.raises(ValueError, match="Calib"):
        Calibrator(ort_method="MinMax", ort_options={"ActivationSymmetric": True})
