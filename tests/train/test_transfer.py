"""Tests for edgekd.transfer: the head found generically, the backbone loaded and frozen in
phase 1, everything trainable in phase 2, mismatches named by layer, pickles refused."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from edgekd.errors import ModelFileError
from edgekd.io.artifacts import save_weights
from edgekd.models.zoo import build_model
from edgekd.train.config import TeacherConfig, TransferConfig
from edgekd.train.plumbing import RunOptions, TrainData
from edgekd.train.transfer import HeadOnly, find_head, load_backbone, transfer


class Payload:
    """Pickles to a call of os.system: unpickling it runs the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def tiny(num_classes=5, width=4, in_channels=1, seed=0):
    torch.manual_seed(seed)
    return build_model("tinycnn", in_channels=in_channels, num_classes=num_classes, width=width)


@pytest.fixture
def pretrained_file(tmp_path, tiny_images):
    """A TinyCNN (width 4, 5 classes) with non-trivial BN statistics, saved as safetensors."""
    model = tiny(num_classes=5, seed=1)
    model.train()
    with torch.no_grad():
        model(tiny_images(16, seed=5) * 3 + 1)  # move the running statistics away from 0 / 1
    path = tmp_path / "pretrained.safetensors"
    save_weights(model, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def data(tiny_images):
    g = torch.Generator().manual_seed(0)
    return {"train_x": tiny_images(48, seed=1), "train_y": torch.randint(0, 3, (48,), generator=g),
            "val_x": tiny_images(24, seed=2), "val_y": torch.randint(0, 3, (24,), generator=g)}


def teacher_cfg(path, head_epochs=2, epochs=0, **kw):
    return TeacherConfig(arch="tinycnn", epochs=epochs, batch_size=16, lr=0.05, augment=False,
                         transfer=TransferConfig(pretrained=str(path), head_epochs=head_epochs, **kw))


# -- the head ------------------------------------------------------------------------------


def test_find_head_by_name_sequential_or_last_linear():
    assert find_head(tiny()) == "fc"
    assert find_head(build_model("mobilenetv2", in_channels=1, num_classes=3, width=0.25)) == "classifier"
    vgg_like = nn.Module()
    vgg_like.features = nn.Conv2d(1, 2, 3)
    vgg_like.classifier = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3))
    assert find_head(vgg_like) == "classifier.3"
    unnamed = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert find_head(unnamed) == "3"
    with pytest.raises(ModelFileError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_backbone_loaded_and_head_replaced_for_new_classes(pretrained_file):
    path, saved = pretrained_file
    model = tiny(num_classes=3, seed=2)
    fresh_head = model.fc.weight.detach().clone()
    info = load_backbone(model, path)
    assert info["head"] == "fc" and info["pretrained_head_shape"] == [5, 16]
    state = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key  # weights and BN buffers
    assert model.fc.weight.shape == (3, 16) and torch.equal(model.fc.weight, fresh_head)


def test_grey_model_from_rgb_weights_sums_the_first_kernels(tmp_path):
    rgb = tiny(in_channels=3, seed=3)
    path = tmp_path / "rgb.safetensors"
    save_weights(rgb, path)
    grey = tiny(num_classes=3, in_channels=1)
    info = load_backbone(grey, path)
    assert info["adapted"] == ["features.0.0.weight"]
    assert torch.allclose(grey.features[0][0].weight, rgb.features[0][0].weight.sum(1, keepdim=True))


def test_shape_mismatch_outside_the_head_names_the_layer(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_weights(tiny(width=8), path)
    with pytest.raises(ModelFileError) as info:
        load_backbone(tiny(width=4, num_classes=3), path)
    message = str(info.value)
    assert "\n" not in message
    assert "shape mismatch: features.0.0.weight (file (8, 1, 3, 3), model (4, 1, 3, 3))" in message
    missing = tmp_path / "missing.safetensors"
    from safetensors.torch import save_file

    save_file({k: v for k, v in tiny().state_dict().items() if not k.startswith("features.4")}, str(missing))
    with pytest.raises(ModelFileError, match="missing: features.4.0.weight"):
        load_backbone(tiny(num_classes=3), missing)


def test_pickle_payload_is_refused_and_never_run(tmp_path, canary):
    path = tmp_path / "evil.pt"
    torch.save({"features.0.0.weight": Payload(f"touch {canary}")}, path)
    with pytest.raises(ModelFileError, match="refused to load"):
        load_backbone(tiny(num_classes=3), path)
    assert not canary.exists()


def test_plain_pt_state_dict_is_accepted(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": tiny(seed=4).state_dict()}, path)
    model = tiny(num_classes=3)
    load_backbone(model, path)
    assert torch.equal(model.features[0][0].weight, tiny(seed=4).features[0][0].weight)


# -- the two phases ---------------------------------------------------------------------------


def test_phase_1_trains_only_the_head(pretrained_file, data):
    path, saved = pretrained_file
    model = tiny(num_classes=3, seed=2)
    report = transfer(model, TrainData.of(**data), teacher_cfg(path, head_epochs=2, epochs=0),
                      RunOptions(progress=False))
    state = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key  # frozen: weights and BN statistics unchanged
    assert all(p.grad is None for name, p in model.named_parameters() if not name.startswith("fc."))
    assert model.fc.weight.grad is not None  # the head did train
    assert len(report["head_epochs"]) == 2
    assert {"val_top1_head", "val_top1_finetune", "val_top1_pretrained_backbone"} <= set(report)


def test_head_only_wrapper_freezes_gradients_and_batch_norm():
    model = tiny(num_classes=3)
    frozen = HeadOnly(model, "fc").train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns) and model.fc.training and frozen.training


def test_phase_2_trains_every_layer_at_the_lower_lr(pretrained_file, data):
    path, saved = pretrained_file
    model = tiny(num_classes=3, seed=2)
    report = transfer(model, TrainData.of(**data), teacher_cfg(path, head_epochs=1, epochs=1, finetune_lr=0.01),
                      RunOptions(progress=False))
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(model.features[0][0].weight, saved["features.0.0.weight"])  # the backbone moved
    assert report["finetune_lr"] == 0.01
    assert len(report["fit"].epochs) == 1
    # finetune_lr unset: a tenth of teacher.lr
    default = transfer(tiny(num_classes=3, seed=2), TrainData.of(**data), teacher_cfg(path, head_epochs=0, epochs=1),
                       RunOptions(progress=False))
    assert default["finetune_lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("transfer_cfg,message", [
    ({}, "teacher.transfer.pretrained must name a weights file"),
    ({"pretrained": "w.pt", "head_epochs": -1}, "teacher.transfer.head_epochs must be >= 0"),
    ({"pretrained": "w.pt", "finetune_lr": 0}, "teacher.transfer.finetune_lr must be positive"),
    ({"pretrained": "w.pt", "lr": 0.1}, "unknown key 'teacher.transfer.lr'"),
])
def test_recipe_validates_transfer(transfer_cfg, message):
    from edgekd.errors import ConfigError
    from edgekd.recipe import Recipe

    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict({"teacher": {"transfer": transfer_cfg}})
