"""Shared tiny fixtures for the edgekd unit tests.

Everything here is sized for a busy 2-core CPU: 1x8x8 images, 3 classes, TinyCNN of
width 4 (1,583 parameters). torch and onnx are imported inside the fixtures, so the test
files that do not need them (test_data.py, test_bench.py) do not pay for the import.
"""

from __future__ import annotations

import sys

import pytest

import fuzzing  # noqa: F401 - loads the Hypothesis profile (derandomized, no database) before any test

IN_CHANNELS = 1
HW = 8
NUM_CLASSES = 3
INPUT_SHAPE = (IN_CHANNELS, HW, HW)
CLASS_NAMES = ("ant", "bee", "cat")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The machine is shared: keep PyTorch to one intra-op thread when it is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_spec():
    """A DataSpec for 1x8x8 grey images of 3 classes, normalized with mean 0.5, std 0.25."""
    from edgekd.data.splits import DataSpec

    return DataSpec(
        name="tiny", channels=IN_CHANNELS, height=HW, width=HW, num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES, mean=(0.5,), std=(0.25,), source="tests",
    )


@pytest.fixture
def make_tiny_cnn():
    """Factory: a TinyCNN of width 4 (1 -> 3 classes) with reproducible weights."""
    import torch

    from edgekd.models.zoo import build_model

    def make(seed: int = 0, width: int = 4, num_classes: int = NUM_CLASSES, in_channels: int = IN_CHANNELS):
        torch.manual_seed(seed)
        return build_model("tinycnn", in_channels=in_channels, num_classes=num_classes, width=width)

    return make


@pytest.fixture
def tiny_images():
    """Factory: n float images of INPUT_SHAPE from a seeded normal distribution."""
    import torch

    def make(n: int, seed: int = 0):
        return torch.randn(n, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))

    return make


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A TinyCNN (width 4) exported once to fp32 ONNX with edgekd.export.to_onnx.

    Returns (path, model). Conv output channels are 4, 8 and 16; the Gemm head is 16 -> 3.
    """
    import torch

    from edgekd.models.zoo import build_model
    from edgekd.onnx_export import ExportConfig, to_onnx

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("tinycnn", in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, width=4).eval()
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    to_onnx(model, path, input_shape=INPUT_SHAPE, metadata={"edgekd.stage": "student"},
            cfg=ExportConfig(check_batch_sizes=[1, 3]))
    return path, model


@pytest.fixture
def calib_images():
    """40 float32 calibration images (preprocessed NCHW), fixed seed."""
    import numpy as np

    return np.random.default_rng(0).standard_normal((40, *INPUT_SHAPE)).astype(np.float32)


@pytest.fixture
def canary(tmp_path):
    """A file that a malicious payload would create; tests assert it never appears."""
    path = tmp_path / "CANARY"
    assert not path.exists()
    return path


@pytest.fixture
def separable():
    """2-D points, label 1 when x0 + x1 > 0, with a margin of 0.5 around the boundary."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g) * 2
    x = x[(x.sum(1)).abs() > 0.5][:192]
    y = (x.sum(1) > 0).long()
    return {"train_x": x[:128], "train_y": y[:128], "val_x": x[128:], "val_y": y[128:]}


@pytest.fixture
def imported_modules():
    """Function: the top-level packages a Python file imports anywhere in it (read with ast,
    not run), for the checks that a module stays free of torch."""
    import ast
    from pathlib import Path

    def read(path) -> set[str]:
        imported = set()
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        return imported

    return read


TINY_RUN_RECIPE = """\
name: tiny
data: {{name: {data}, calib_size: 16}}
teacher: {{arch: tinycnn, arch_args: {{width: 4}}, epochs: 2, batch_size: 32}}
distill: {{arch: tinycnn, arch_args: {{width: 4}}, epochs: 2, batch_size: 32}}
quantize: {{max_drop: null}}
export: {{check_batch_sizes: [2]}}
bench: {{warmup: 0, runs: 2, min_seconds: 0}}
"""


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    """A folder with tiny.npz (150 train and 30 test grey 8x8 images of 3 classes, told apart by
    their brightness) and tiny.yaml, a recipe for it: a whole `edgekd compress` in seconds."""
    import numpy as np

    folder = tmp_path_factory.mktemp("tiny-run")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 150), ("test", 30)):
        labels = rng.integers(0, 3, n)
        arrays[f"{split}_x"] = (rng.integers(0, 60, (n, 1, 8, 8)) + labels[:, None, None, None] * 60).astype(np.uint8)
        arrays[f"{split}_y"] = labels.astype(np.int64)
    np.savez(folder / "tiny.npz", **arrays)
    (folder / "tiny.yaml").write_text(TINY_RUN_RECIPE.format(data=folder / "tiny.npz"))
    return folder


# -- no test writes to the checkout (checked in CI, where nothing else edits the tree) ----------

_CHECKOUT_NOISE = (".venv/", "__pycache__/", ".egg-info/")


def _checkout_files() -> set[str] | None:
    """Untracked and ignored paths of the checkout, less what installing and importing make."""
    import subprocess
    from pathlib import Path

    top = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             cwd=top, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an sdist): nothing to compare
    return {line[3:] for line in out.splitlines() if not any(n in line for n in _CHECKOUT_NOISE)}


def pytest_sessionstart(session):
    import os

    session.config._checkout_before = _checkout_files() if os.environ.get("CI") else None


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_checkout_before", None)
    if before is None:
        return
    written = sorted((_checkout_files() or set()) - before)
    if written:
        print(f"\nTests wrote into the checkout (they must write under tmp_path): {', '.join(written[:10])}")
        session.exitstatus = 1


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e/ runs a whole edgekd command on real data: marked e2e
    (`pytest -m 'not e2e'` leaves them out of a quick loop)."""
    for item in items:
        if "/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
