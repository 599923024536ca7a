"""edgekd.data.normalize: hand-computed values, numpy only, and the same floats as training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgekd.data import normalize as normalize_module
from edgekd.data.normalize import normalize
from edgekd.runtime.inputs import preprocess


def test_one_channel_by_hand():
    x = np.array([0, 51, 102, 255], np.uint8).reshape(1, 1, 2, 2)  # /255: 0, 0.2, 0.4, 1
    out = normalize(x, mean=(0.2,), std=(0.5,))
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out.ravel(), [-0.4, 0.0, 0.4, 1.6], rtol=1e-6, atol=1e-7)


def test_per_channel_by_hand():
    x = np.zeros((2, 3, 1, 1), np.uint8)
    x[0, :, 0, 0] = [255, 0, 51]
    x[1, :, 0, 0] = [0, 255, 255]
    out = normalize(x, mean=(0.5, 0.0, 1.0), std=(0.5, 2.0, 0.25))
    # (1 - 0.5)/0.5, (0 - 0)/2, (0.2 - 1)/0.25 and (0 - 0.5)/0.5, (1 - 0)/2, (1 - 1)/0.25
    np.testing.assert_allclose(out[:, :, 0, 0], [[1.0, 0.0, -3.2], [-1.0, 0.5, 0.0]], rtol=1e-6, atol=1e-7)


def test_none_skips_a_step_and_one_value_serves_all_channels():
    x = np.array([0, 255, 51], np.uint8).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(normalize(x).ravel(), [0.0, 1.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(normalize(x, mean=(0.5,)).ravel(), [-0.5, 0.5, -0.3], rtol=1e-6)
    np.testing.assert_allclose(normalize(x, std=(0.25,)).ravel(), [0.0, 4.0, 0.8], rtol=1e-6)


def test_exactly_the_float32_steps():
    """Each step is one float32 rounding: x/255, then - mean, then / std, nothing fused."""
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    mean, std = (0.2860402, 0.1, 0.7), (0.3530239, 0.9, 0.05)
    steps = x.astype(np.float32) / np.float32(255)
    steps = steps - np.float32(mean).reshape(1, 3, 1, 1)
    steps = steps / np.float32(std).reshape(1, 3, 1, 1)
    assert normalize(x, mean, std).tobytes() == steps.tobytes()


def test_input_untouched_and_output_contiguous():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    view = x[:, :, ::2, ::-1]  # neither contiguous nor positive strides
    before = x.copy()
    out = normalize(view, (0.5,), (0.5,))
    assert out.flags.c_contiguous and out.shape == view.shape
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(out, (view / 255.0 - 0.5) / 0.5, rtol=1e-5, atol=1e-6)


def test_preprocess_is_the_normalizer():
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    meta = {"edgekd.mean": json.dumps(mean), "edgekd.std": json.dumps(std)}
    assert preprocess(x, meta).tobytes() == normalize(x, mean, std).tobytes()
    assert preprocess(x, {}).tobytes() == normalize(x).tobytes()


def test_to_tensor_is_the_normalizer():
    pytest.importorskip("torch")
    from edgekd.train.tensors import to_tensor

    x = np.random.default_rng(2).integers(0, 256, (4, 1, 6, 6), dtype=np.uint8)
    mean, std = (0.2860402,), (0.3530239,)
    assert to_tensor(x, mean, std).numpy().tobytes() == normalize(x, mean, std).tobytes()


def test_imports_only_numpy(imported_modules):
    assert imported_modules(normalize_module.__file__) <= {"__future__", "numpy"}


def test_importing_it_does_not_import_torch():
    code = (
        "import sys; import edgekd.data.normalize, edgekd.runtime.inputs, edgekd.data.splits; "
        "import edgekd.data.formats; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
