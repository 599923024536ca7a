"""Tests for edgekd.artifacts: atomic writes, and weights files that never run code."""

from __future__ import annotations

import os
import random
import stat

import pytest
import torch
from safetensors.torch import save as safetensors_save

from edgekd.errors import ModelFileError
from edgekd.io.artifacts import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    load_state_dict,
    load_weights,
    save_weights,
)


class Payload:
    """Pickles to a call of os.system: unpickling it runs the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# -- save / load round trip --------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_outputs(tmp_path, make_tiny_cnn, tiny_images):
    source = make_tiny_cnn(seed=0)
    # move the BN running statistics away from their init, so buffers are part of the check
    source.train()
    with torch.no_grad():
        source(tiny_images(4, seed=9))
    source.eval()
    path = save_weights(source, tmp_path / "w.safetensors")
    assert path == tmp_path / "w.safetensors" and path.is_file()

    target = make_tiny_cnn(seed=1).eval()
    x = tiny_images(5)
    with torch.no_grad():
        assert not torch.equal(source(x), target(x))  # different init before loading
        load_weights(target, path)
        assert torch.equal(source(x), target(x))
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_load_state_dict_reads_plain_and_wrapped_pt(tmp_path, make_tiny_cnn):
    model = make_tiny_cnn()
    state = model.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("plain.pt", "wrapped.pth"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_wrong_shape_names_the_layer(tmp_path, make_tiny_cnn):
    path = save_weights(make_tiny_cnn(width=4), tmp_path / "w4.safetensors")
    with pytest.raises(ModelFileError) as info:
        load_weights(make_tiny_cnn(width=8), path)
    message = str(info.value)
    assert "shape mismatch" in message
    # the first conv: file (4, 1, 3, 3), model (8, 1, 3, 3)
    assert "features.0.0.weight (file (4, 1, 3, 3), model (8, 1, 3, 3))" in message
    assert info.value.exit_code == 2


def test_wrong_head_names_the_classifier(tmp_path, make_tiny_cnn):
    path = save_weights(make_tiny_cnn(num_classes=3), tmp_path / "w.safetensors")
    target = make_tiny_cnn(num_classes=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ModelFileError, match=r"fc\.weight \(file \(3, 16\), model \(5, 16\)\)"):
        load_weights(target, path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing half-loaded


def test_missing_and_unexpected_keys_are_named(tmp_path, make_tiny_cnn):
    state = make_tiny_cnn().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelFileError) as info:
        load_weights(make_tiny_cnn(), tmp_path / "w.pt")
    assert "missing: fc.bias" in str(info.value) and "unexpected: extra.weight" in str(info.value)


# -- refusing unsafe or broken files ------------------------------------------------------------


def test_pickled_code_is_refused_and_never_run(tmp_path, canary):
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload(f"touch {canary}")}, path)
    assert not canary.exists()  # saving does not run it
    with pytest.raises(ModelFileError, match="refused to load"):
        load_state_dict(path)
    with pytest.raises(ModelFileError):
        load_weights(torch.nn.Linear(1, 1), path)
    assert not canary.exists()
    # control: the payload is real; a full unpickle would have run it
    torch.load(path, weights_only=False)
    assert canary.exists()


@pytest.mark.parametrize(
    "content",
    [b"", random.Random(0).randbytes(1024), b"\xff" * 8 + b"{}"],
    ids=["empty", "random-bytes", "huge-header-length"],
)
def test_corrupt_safetensors(tmp_path, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="is not a valid safetensors file"):
        load_state_dict(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_safetensors(tmp_path, make_tiny_cnn, keep):
    good = tmp_path / "good.safetensors"
    save_weights(make_tiny_cnn(), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="is not a valid safetensors file"):
        load_state_dict(bad)
    assert len(load_state_dict(good)) == len(make_tiny_cnn().state_dict())  # the intact file loads


@pytest.mark.parametrize(
    "obj, fragment",
    [(torch.zeros(3), "does not hold a state_dict"), ({"a": torch.zeros(1), "b": 3}, "does not hold a state_dict")],
)
def test_pt_that_is_not_a_state_dict(tmp_path, obj, fragment):
    torch.save(obj, tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match=fragment):
        load_state_dict(tmp_path / "w.pt")


def test_random_bytes_pt(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelFileError, match="refused to load"):
        load_state_dict(tmp_path / "w.pt")


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_state_dict(tmp_path / "none.safetensors")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_state_dict(tmp_path)  # a folder


def test_safetensors_is_read_as_tensors(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(safetensors_save({"a": torch.arange(3.0)}))
    assert torch.equal(load_state_dict(tmp_path / "w.safetensors")["a"], torch.tensor([0.0, 1.0, 2.0]))


# -- atomic writes -------------------------------------------------------------------------------


def test_atomic_write_replaces_content(tmp_path):
    path = tmp_path / "sub" / "report.json"  # the folder is created
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["report.json"]


def test_failure_midway_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.onnx"
    atomic_write_text(path, "previous version")
    seen_tmp = []
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            seen_tmp.append(tmp)
            assert tmp.parent == tmp_path and tmp != path
            tmp.write_bytes(b"half a new ver")
            raise RuntimeError("disk full")
    assert path.read_text() == "previous version"
    assert not seen_tmp[0].exists()
    assert os.listdir(tmp_path) == ["model.onnx"]  # no temporary file left behind


def test_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_file_mode_follows_umask(tmp_path, make_tiny_cnn, umask, mask, mode):
    # mkstemp creates 0600 files; artifacts must get 0666 & ~umask like any ordinary file
    umask(mask)
    text = atomic_write_text(tmp_path / "a.txt", "x")
    weights = save_weights(make_tiny_cnn(), tmp_path / "w.safetensors")
    for path in (text, weights):
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)
