"""Issue 28, CLI habits: YAML errors with line and column, did-you-mean for names and keys,
`--set KEY VALUE` explained, the torchvision list whole, export without --onnx, and every
click usage error as one `edgekd: error:` line with exit 2."""

from __future__ import annotations

import click
import pytest
import torch

from clitools import cli, refused
from edgekd.cli import main
from edgekd.errors import ConfigError
from edgekd.models.zoo import build_model
from edgekd.recipe import Recipe
from edgekd.runtime.providers import resolve_provider


def test_yaml_errors_give_line_and_column(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("teacher:\n  epochs: 3\n    lr: 0.1\n")
    refused(cli("compress", recipe), "line 3, column 7", "mapping values are not allowed here")
    refused(cli("export", "--weights", tmp_path / "w.pt", "--arch", "tinycnn", "--arch-args", "{a: [1}"),
            "--arch-args is not valid YAML: line 1, column 7")


def test_did_you_mean_for_architectures_recipe_keys_and_providers():
    with pytest.raises(ConfigError, match=r"unknown architecture 'resnt20' \(did you mean 'resnet20'"):
        build_model("resnt20", in_channels=1, num_classes=10)
    with pytest.raises(ConfigError, match=r"did you mean 'torchvision:resnet18'\?"):
        build_model("resnet18", in_channels=1, num_classes=10)
    with pytest.raises(ConfigError, match=r"unknown key 'teachr' in --set \(did you mean 'teacher'\?\)"):
        Recipe.default(["teachr.epochs=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'teacher\.epocs' .*did you mean 'teacher\.epochs'\?"):
        Recipe.default(["teacher.epocs=3"])
    with pytest.raises(ConfigError, match=r"unknown provider 'cdua' \(did you mean 'cuda'\?\); known: cpu"):
        resolve_provider("cdua")
    refused(cli("bench", "m.onnx", "--provider", "opnvino"), "did you mean 'openvino'?")


def test_set_without_equals_is_explained_not_read_as_a_recipe_file():
    refused(cli("compress", "--set", "teacher.epochs", "2"), "--set takes KEY=VALUE: did you mean --set teacher.epochs=2?")
    refused(cli("compress", "--resume", "runs/x", "--set", "teacher.epochs", "2"), "--set teacher.epochs=2?")


def test_the_torchvision_list_is_whole_and_errors_say_where_to_read_it():
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    with pytest.raises(ConfigError) as info:
        build_model("torchvision:resnet1", in_channels=1, num_classes=10)
    message = str(info.value)
    assert "'resnet18'" in message and f"{len(names)} torchvision classifiers" in message
    assert "edgekd list architectures" in message and "wide_resnet50_2" not in message  # the closest, not all
    listing = cli("list", "architectures")
    assert listing.exit_code == 0, listing.output
    assert f"{len(names)} classifiers" in listing.output
    assert all(name in listing.output for name in names)


def test_export_defaults_to_onnx(tmp_path):
    from edgekd.io.artifacts import save_weights

    torch.manual_seed(0)
    save_weights(build_model("tinycnn", in_channels=1, num_classes=10, width=4), tmp_path / "w.safetensors")
    result = cli("export", "--weights", tmp_path / "w.safetensors", "--arch", "tinycnn", "--arch-args", "{width: 4}",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "w.fp32.onnx").is_file()


@pytest.fixture
def strict_command():
    """A command with a required option and argument, as click reports their absence."""

    @click.command("strict-test")
    @click.argument("thing")
    @click.option("--level", type=int, required=True)
    def strict(thing, level):
        click.echo(f"{thing} {level}")

    main.add_command(strict)
    yield
    main.commands.pop("strict-test")


@pytest.mark.parametrize("args, expected", [
    (["export", "--bogus"], "No such option '--bogus'"),
    (["--bogus"], "No such option '--bogus'"),
    (["expor"], "No such command 'expor'. Did you mean 'export'?"),
    (["export", "--opset", "x"], "'x' is not a valid integer"),
    (["export", "--weights"], "requires an argument"),
    (["export", "--stage", "middle"], "'middle' is not one of"),
    (["bench"], "give .onnx MODELS"),
    (["strict-test", "a"], "Missing option '--level'"),
    (["strict-test", "--level", "1"], "Missing argument 'THING'"),
])
def test_click_usage_errors_are_one_edgekd_line_with_exit_2(strict_command, args, expected):
    refused(cli(*args), expected)
