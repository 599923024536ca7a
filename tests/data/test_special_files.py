"""A FIFO (named pipe) where edgekd reads data never blocks it: a manifest row naming one, the
manifest itself, an .npz or IDX file, a data path, an image swapped for one after the scan.
Every file a scan reads is checked to be a regular file first; a row naming anything else is a
bad file like an unreadable one (refused, or with data.skip_bad skipped and counted), a data
file that is one is refused, each with one line saying what it is.

Every case runs in a subprocess with a timeout: opening a FIFO without a writer blocks forever,
and a regression must fail this test, not hang the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from imagefiles import write_folder

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60
FIFO = "is a FIFO (named pipe)"

LOAD = """\
import json, sys
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.errors import DataError
try:
    splits = load_splits(DataConfig(**json.loads(sys.argv[1])))
except DataError as exc:
    print(f"DataError: {exc}")
    sys.exit(2)
print(json.dumps(splits.record.get("skipped")))
"""

DECODE = """\
import sys
from edgekd.data.image_files import decode
from edgekd.errors import DataError
try:
    decode(sys.argv[1], "RGB")
except DataError as exc:
    print(f"DataError: {exc}")
    sys.exit(2)
"""


def run_python(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"blocked for {TIMEOUT} s: a FIFO was opened for reading")


def load(data: dict, cwd: Path) -> subprocess.CompletedProcess:
    return run_python(["-c", LOAD, json.dumps(data)], cwd)


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "images", per_class=4, test_per_class=2, sizes=((32, 32),))


def manifest_with_fifo_row(folder: Path) -> tuple[Path, Path]:
    """folder/data.csv listing every image, plus a row naming train/circle/pipe.png, a FIFO."""
    fifo = folder / "train" / "circle" / "pipe.png"
    os.mkfifo(fifo)
    rows = ["path,label,split"] + [f"{p.relative_to(folder)},{p.parent.name},{p.parts[-3]}"
                                   for p in sorted(folder.glob("*/*/*"))]
    manifest = folder / "data.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, fifo


def test_fifo_in_a_manifest_row_is_refused_by_the_cli(tmp_path, folder):
    manifest, fifo = manifest_with_fifo_row(folder)
    tiny = {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 8}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"name": "manifest", "path": str(manifest)}, "teacher": tiny,
                                      "distill": tiny, "quantize": {"max_drop": None}}))
    out = tmp_path / "run"
    result = run_python(["-m", "edgekd", "compress", recipe, "--out", out, "--no-progress"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgekd: error:")]
    assert len(errors) == 1, result.stderr
    assert f"{fifo} {FIFO}, not an image file" in errors[0] and "data.skip_bad" in errors[0]
    assert not (out / "state" / "progress.json").exists()


def test_fifo_in_a_manifest_row_is_skipped_and_counted_with_skip_bad(tmp_path, folder):
    manifest, _ = manifest_with_fifo_row(folder)
    result = load({"name": "manifest", "path": str(manifest), "skip_bad": True}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"train": {"not_a_file": 1}}


@pytest.mark.parametrize("fmt, name", [("manifest", "data.csv"), ("npz", "data.npz")])
def test_fifo_as_the_data_file_is_refused(tmp_path, fmt, name):
    """A manifest or npz path that is a FIFO, given as data.path or as data.name."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    for data in ({"name": fmt, "path": str(fifo)}, {"name": str(fifo)}):
        result = load(data, tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{fifo} {FIFO}, not a" in result.stdout


def test_fifo_as_the_train_manifest_of_a_folder_is_refused(tmp_path):
    (tmp_path / "test.csv").write_text("a.png,x\n")
    os.mkfifo(tmp_path / "train.csv")
    result = load({"name": "manifest", "path": str(tmp_path)}, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"manifest {tmp_path / 'train.csv'} {FIFO}, not a regular file" in result.stdout


def test_fifo_as_an_idx_file_is_refused(tmp_path):
    """The image file of an IDX folder is a FIFO: named as such, not passed over as missing."""
    labels = np.zeros(2, np.uint8)
    for stem, array in (("t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8)),
                        ("train-labels-idx1-ubyte", labels), ("t10k-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (tmp_path / stem).write_bytes(header + array.tobytes())
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    result = load({"name": "mnist", "path": str(tmp_path)}, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{tmp_path / 'train-images-idx3-ubyte'} {FIFO}, not a regular file" in result.stdout


def test_an_image_swapped_for_a_fifo_after_the_scan_is_refused_when_decoded(tmp_path):
    """Streaming decodes each file again per batch: a file that became a FIFO since the scan."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    result = run_python(["-c", DECODE, fifo], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot read image {fifo}: it {FIFO}, not an image file" in result.stdout
