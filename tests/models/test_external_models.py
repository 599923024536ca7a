"""Models from outside the zoo: timm:NAME (an optional extra) and 'module:function' found
beside the recipe or in the current folder without PYTHONPATH."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid

import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.models.adapt import adaptations
from edgekd.models.zoo import build_model

HAS_TIMM = importlib.util.find_spec("timm") is not None


# -- timm -----------------------------------------------------------------------------------


def test_timm_missing_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError) as info:
        build_model("timm:resnet18", in_channels=1, num_classes=10)
    message = str(info.value)
    assert "pip install 'edgekd[timm]'" in message and "\n" not in message


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'edgekd[timm]')")
def test_timm_model_is_built_for_the_data_and_adapted():
    torch.manual_seed(0)
    model = build_model("timm:resnet18", in_channels=1, num_classes=7, input_size=(28, 28)).eval()
    assert adaptations(model) == ["conv1: stride 2 -> 1", "maxpool: MaxPool2d removed"]
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'edgekd[timm]')")
def test_timm_unknown_name_and_download_arguments_are_refused():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet18x'"):
        build_model("timm:resnet18x", in_channels=1, num_classes=10)
    for key in ("pretrained", "checkpoint_path"):
        with pytest.raises(ConfigError, match=f"arch_args {key} are not accepted"):
            build_model("timm:resnet18", in_channels=1, num_classes=10, **{key: True})


def test_unknown_name_mentions_timm():
    with pytest.raises(ConfigError, match=r"'timm:NAME'"):
        build_model("resnet9", in_channels=1, num_classes=10)


# -- module:function from a folder ----------------------------------------------------------

FACTORY = textwrap.dedent("""
    from torch import nn

    def build(in_channels, num_classes, width=4):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))
""")


@pytest.fixture
def module_name(monkeypatch):
    """A unique module name; sys.path and sys.modules are restored afterwards."""
    name = f"mynet_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        sys.modules.pop(key)


def test_module_in_the_current_folder(tmp_path, monkeypatch, module_name):
    (tmp_path / f"{module_name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    model = build_model(f"{module_name}:build", in_channels=2, num_classes=3, width=5)
    assert model[0].in_channels == 2 and model[0].out_channels == 5
    assert model(torch.randn(1, 2, 8, 8)).shape == (1, 3)


def test_module_next_to_the_recipe(tmp_path, monkeypatch, module_name):
    recipe_dir = tmp_path / "project"
    recipe_dir.mkdir()
    (recipe_dir / f"{module_name}.py").write_text(FACTORY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match="looked on sys.path and in"):
        build_model(f"{module_name}:build", in_channels=1, num_classes=2)
    model = build_model(f"{module_name}:build", in_channels=1, num_classes=2, search_dirs=[recipe_dir])
    assert model[-1].out_features == 2


def test_a_module_found_once_is_found_by_later_builds(tmp_path, monkeypatch, module_name):
    (tmp_path / f"{module_name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path.parent)  # not the module's folder
    build_model(f"{module_name}:build", in_channels=1, num_classes=3, search_dirs=[tmp_path])
    model = build_model(f"{module_name}:build", in_channels=1, num_classes=2)  # no search_dirs now
    assert model[-1].out_features == 2


def test_package_in_the_current_folder(tmp_path, monkeypatch, module_name):
    package = tmp_path / module_name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    model = build_model(f"{module_name}.nets:build", in_channels=1, num_classes=4)
    assert model[-1].out_features == 4


def test_a_module_that_fails_to_import_names_its_own_error(tmp_path, monkeypatch, module_name):
    (tmp_path / f"{module_name}.py").write_text("import no_such_dependency_for_edgekd\n" + FACTORY)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no_such_dependency_for_edgekd"):
        build_model(f"{module_name}:build", in_channels=1, num_classes=2)


def test_missing_module_says_where_it_looked(tmp_path, monkeypatch, module_name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_model(f"{module_name}:build", in_channels=1, num_classes=2, search_dirs=[tmp_path / "recipes"])
    message = str(info.value)
    assert f"cannot import module '{module_name}'" in message and str(tmp_path) in message
