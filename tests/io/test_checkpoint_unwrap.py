"""Weights files as training scripts save them: DataParallel's 'module.' prefix stripped with a
note, checkpoint dicts unwrapped, a channel/class mismatch pointing at teacher.transfer, and
still no pickled code."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from safetensors.torch import save_file

from edgekd.configtools import MAX_MESSAGE
from edgekd.errors import ModelFileError
from edgekd.io.artifacts import (
    load_state_dict,
    load_weights,
    transfer_hint,
    unwrap_checkpoint,
)
from edgekd.train.transfer import load_backbone


class Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def prefixed(state: dict, prefix: str = "module.") -> dict:
    return {prefix + k: v for k, v in state.items()}


def same(model, state) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_dataparallel_prefix_is_stripped_with_a_note(tmp_path, make_tiny_cnn, caplog):
    state = make_tiny_cnn(seed=1).state_dict()
    torch.save(prefixed(state), tmp_path / "ddp.pt")
    target = make_tiny_cnn(seed=2)
    with caplog.at_level(logging.INFO, logger="edgekd"):
        load_weights(target, tmp_path / "ddp.pt")
    assert same(target, state)
    assert any("'module.' stripped" in r.getMessage() and "DataParallel" in r.getMessage() for r in caplog.records)


def test_dataparallel_prefix_in_safetensors(tmp_path, make_tiny_cnn):
    state = make_tiny_cnn(seed=1).state_dict()
    save_file(prefixed(state), str(tmp_path / "ddp.safetensors"))
    target = make_tiny_cnn(seed=2)
    load_weights(target, tmp_path / "ddp.safetensors")
    assert same(target, state)


def test_ddp_and_compile_prefixes_together(tmp_path, make_tiny_cnn):
    state = make_tiny_cnn(seed=1).state_dict()
    torch.save(prefixed(state, "module._orig_mod."), tmp_path / "w.pt")
    assert set(load_state_dict(tmp_path / "w.pt")) == set(state)


def test_a_model_whose_own_layer_is_called_module_keeps_its_keys(tmp_path, make_tiny_cnn):
    wrapper = torch.nn.Sequential()
    wrapper.add_module("module", make_tiny_cnn(seed=1))
    torch.save(wrapper.state_dict(), tmp_path / "w.pt")
    target = torch.nn.Sequential()
    target.add_module("module", make_tiny_cnn(seed=2))
    load_weights(target, tmp_path / "w.pt")
    assert same(target, wrapper.state_dict())


@pytest.mark.parametrize("wrap", [
    lambda s: {"model": s, "epoch": 3},
    lambda s: {"state_dict": s, "epoch": 3, "best_acc": 91.2},
    lambda s: {"model_state_dict": s, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 7},
    lambda s: {"ema": s, "step": 100},
    lambda s: {"model": {"state_dict": s}, "epoch": 3},
    lambda s: {"checkpoint": 1, "model": {"module": prefixed(s)}},
    lambda s: {"state_dict": prefixed(s), "epoch": 3},
], ids=["model", "state_dict", "model_state_dict", "ema", "nested", "nested-module", "prefixed"])
def test_checkpoint_dicts_are_unwrapped(tmp_path, make_tiny_cnn, wrap):
    state = make_tiny_cnn(seed=1).state_dict()
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    target = make_tiny_cnn(seed=2)
    load_weights(target, tmp_path / "ckpt.pth")
    assert same(target, state)


def test_the_model_is_preferred_over_its_ema(make_tiny_cnn):
    model, ema = make_tiny_cnn(seed=1).state_dict(), make_tiny_cnn(seed=2).state_dict()
    found, where = unwrap_checkpoint({"ema": ema, "model": model, "epoch": 1})
    assert found is model and where == "model"


def test_averaged_model_state_dict_loads(tmp_path, make_tiny_cnn):
    source = make_tiny_cnn(seed=1)
    averaged = torch.optim.swa_utils.AveragedModel(source)  # keys 'module.*' plus 'n_averaged'
    torch.save({"ema": averaged.state_dict()}, tmp_path / "ema.pt")
    target = make_tiny_cnn(seed=2)
    load_weights(target, tmp_path / "ema.pt")
    assert same(target, source.state_dict())


def test_a_dict_without_weights_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "net": "resnet", "lr": 0.1}, tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match=r"does not hold a state_dict of tensors \(its keys: epoch, net, lr\)"):
        load_state_dict(tmp_path / "w.pt")


def test_pickled_code_inside_a_checkpoint_is_still_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(f"touch {marker}"), "epoch": 1}, tmp_path / "evil.pth")
    with pytest.raises(ModelFileError, match="refused to load"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_channel_and_class_mismatch_points_at_teacher_transfer(tmp_path, make_tiny_cnn):
    torch.save({"model": make_tiny_cnn(in_channels=3, num_classes=7).state_dict()}, tmp_path / "rgb.pth")
    with pytest.raises(ModelFileError) as info:
        load_weights(make_tiny_cnn(in_channels=1, num_classes=3), tmp_path / "rgb.pth")
    message = str(info.value)
    assert "shape mismatch" in message and "use teacher.transfer: {pretrained: PATH} instead of teacher.weights" \
        in message
    assert "\n" not in message and len(message) <= MAX_MESSAGE
    hint = transfer_hint(make_tiny_cnn(in_channels=3, num_classes=7).state_dict(),
                         make_tiny_cnn(in_channels=1, num_classes=3).state_dict())
    assert "(file: 3 channel(s), 7 classes; model: 1, 3): use teacher.transfer" in hint


def test_other_mismatches_get_no_transfer_hint(tmp_path, make_tiny_cnn):
    torch.save(make_tiny_cnn(width=8).state_dict(), tmp_path / "w8.pt")
    with pytest.raises(ModelFileError) as info:
        load_weights(make_tiny_cnn(width=4), tmp_path / "w8.pt")
    assert "teacher.transfer" not in str(info.value)


def test_transfer_reads_a_wrapped_prefixed_checkpoint(tmp_path, make_tiny_cnn):
    source = make_tiny_cnn(seed=1, num_classes=10)
    torch.save({"model": {"state_dict": prefixed(source.state_dict())}, "epoch": 90}, tmp_path / "pre.pth")
    target = make_tiny_cnn(seed=2, num_classes=3)
    info = load_backbone(target, tmp_path / "pre.pth")
    assert info["head"] == "fc" and info["pretrained_head_shape"] == [10, 16]
    assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)


def test_transfer_names_an_input_channel_mismatch(tmp_path, make_tiny_cnn):
    torch.save(make_tiny_cnn(in_channels=2).state_dict(), tmp_path / "two.pt")
    with pytest.raises(ModelFileError, match=r"takes 2 input channel\(s\) in the file and 1 for the data"):
        load_backbone(make_tiny_cnn(in_channels=1), tmp_path / "two.pt")
