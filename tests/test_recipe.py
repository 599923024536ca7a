"""Tests for edgekd.recipe: defaults, strict keys and types, --set overrides, safe YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from edgekd.distill.config import DistillConfig
from edgekd.errors import ConfigError, EdgekdError
from edgekd.onnx_export import ExportConfig
from edgekd.quant.calibration import CALIBRATORS
from edgekd.quant.config import QuantConfig
from edgekd.recipe import Recipe, apply_override
from edgekd.train.config import OPTIMIZERS, TeacherConfig

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults ----------------------------------------------------------------------------


def test_dataclass_defaults_are_the_default_run():
    recipe = Recipe.default()
    # one source of defaults: the built-in default recipe is the dataclasses' defaults
    assert recipe == Recipe()
    assert recipe.name == "default"
    assert recipe.teacher.arch == "resnet8" and recipe.teacher.epochs == 10
    assert recipe.teacher.augment is False
    assert recipe.distill.arch == "tinycnn" and recipe.distill.arch_args == {"width": 24}
    assert recipe.distill.epochs == 15 and recipe.distill.lr == 0.01
    assert recipe.distill.temperature == 4.0 and recipe.distill.alpha == 0.9
    assert recipe.export.check_batch_sizes == [1, 7]
    assert recipe.bench.runs == 200
    assert recipe.data.calib_size == 512
    assert recipe.teacher.optimizer == "adamw"
    assert recipe.quantize.reduce_range is None  # from quantize.target unless set
    assert recipe.bench.threads == 0


def test_a_recipe_with_one_key_gets_the_default_run_everywhere_else(tmp_path):
    """A recipe with only `distill: {epochs: 3}` runs the default teacher, student and bench."""
    recipe = Recipe.from_yaml(write(tmp_path, "distill: {epochs: 3}\n"))
    assert recipe.distill.epochs == 3
    assert recipe.replace(distill__epochs=15) == Recipe()
    assert recipe.teacher == Recipe().teacher and recipe.bench == Recipe().bench
    assert recipe.distill.arch == "tinycnn" and recipe.distill.arch_args == {"width": 24}


def test_setting_arch_alone_starts_from_no_arch_args():
    assert Recipe.from_dict({"distill": {"arch": "resnet8"}}).distill.arch_args == {}
    assert Recipe.default(["distill.arch=mobilenetv2"]).distill.arch_args == {}
    given = Recipe.from_dict({"distill": {"arch": "tinycnn", "arch_args": {"width": 8}}})
    assert given.distill.arch_args == {"width": 8}


def test_replace_sets_fields_directly_and_checks_them():
    recipe = Recipe().replace(seed=3, data__name="mnist", bench__runs=7)
    assert (recipe.seed, recipe.data.name, recipe.bench.runs) == (3, "mnist", 7)
    with pytest.raises(ConfigError, match="bench.runs"):
        Recipe().replace(bench__runs=0)


def test_empty_and_missing_sections_give_dataclass_defaults(tmp_path):
    assert Recipe.from_yaml(write(tmp_path, "")) == Recipe()
    assert Recipe.from_yaml(write(tmp_path, "teacher:\n", "b.yaml")) == Recipe()
    assert Recipe.from_dict(None) == Recipe()


def test_recipe_is_frozen():
    recipe = Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.seed = 3  # type: ignore[misc]


# -- unknown keys and wrong types --------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("epochz: 3\n", "epochz"),
        ("teacher:\n  epoch: 3\n", "teacher.epoch"),
        ("distill:\n  temprature: 2.0\n", "distill.temprature"),
        ("quantize:\n  calibrate: minmax\n", "quantize.calibrate"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    message = str(info.value)
    assert f"'{key}'" in message
    assert str(path) in message
    assert info.value.exit_code == 2


def test_unknown_nested_key_lists_known_keys_of_that_section(tmp_path):
    with pytest.raises(ConfigError, match="known keys here: .*epochs.*batch_size"):
        Recipe.from_yaml(write(tmp_path, "teacher:\n  epoch: 3\n"))


@pytest.mark.parametrize(
    "text, key, shown",
    [
        ('teacher:\n  epochs: "ten"\n', "teacher.epochs", "'ten' (str)"),
        ("teacher:\n  epochs: true\n", "teacher.epochs", "True (bool)"),  # bool is not an int
        ("teacher:\n  epochs: 3.0\n", "teacher.epochs", "3.0 (float)"),
        ("distill:\n  lr: false\n", "distill.lr", "False (bool)"),  # bool is not a float
        ("distill:\n  augment: 1\n", "distill.augment", "1 (int)"),  # int is not a bool
        ("seed: [1]\n", "seed", "[1] (list)"),
        ("deterministic: 1\n", "deterministic", "1 (int)"),  # int is not a bool
        ("teacher:\n  arch_args: [1, 2]\n", "teacher.arch_args", "(list)"),
        ("export:\n  check_batch_sizes: 7\n", "export.check_batch_sizes", "7 (int)"),
        ("teacher: 5\n", "teacher", "int"),  # a section that is not a mapping
    ],
)
def test_wrong_type_names_key(tmp_path, text, key, shown):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    message = str(info.value)
    assert key in message and shown in message and str(path) in message


def test_int_is_accepted_for_float_and_converted():
    recipe = Recipe.from_dict({"distill": {"lr": 1, "temperature": 2}})
    assert recipe.distill.lr == 1.0 and type(recipe.distill.lr) is float
    assert recipe.distill.temperature == 2.0 and type(recipe.distill.temperature) is float


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"teacher": {"epochs": -1}}, "teacher.epochs must be >= 0, got -1"),
        ({"distill": {"epochs": -5}}, "distill.epochs must be >= 0, got -5"),
        ({"distill": {"alpha": 1.5}}, "distill.alpha must be between 0 and 1"),
        ({"distill": {"temperature": 0}}, "distill.temperature must be positive"),
        ({"teacher": {"batch_size": 0}}, "teacher.batch_size must be positive"),
        ({"data": {"val_fraction": 1.0}}, "data.val_fraction must be between 0 and 1"),
        ({"export": {"opset": 12}}, "export.opset must be >= 13"),
        ({"export": {"check_batch_sizes": []}}, "check_batch_sizes must be a list of positive integers"),
        ({"bench": {"runs": 0}}, "bench.runs must be positive"),
        ({"name": "a/b"}, "without '/'"),
    ],
)
def test_out_of_range_values(tmp_path, raw, fragment):
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_zero_epochs_is_allowed():
    # a teacher loaded from weights trains for 0 epochs
    assert Recipe.from_dict({"teacher": {"epochs": 0}}).teacher.epochs == 0


@pytest.mark.parametrize(
    "factory, field_name, bad, available",
    [
        (TeacherConfig, "optimizer", "adam", OPTIMIZERS),
        (DistillConfig, "optimizer", "rmsprop", OPTIMIZERS),
        (QuantConfig, "calibration", "kl", CALIBRATORS.names()),
    ],
)
def test_unknown_names_list_available_ones(factory, field_name, bad, available):
    with pytest.raises(ConfigError) as info:
        factory(**{field_name: bad})
    message = str(info.value)
    assert f"'{bad}'" in message
    assert "available: " + ", ".join(available) in message


def test_quant_types_are_checked():
    with pytest.raises(ConfigError, match="quantize.activation_type must be one of int8, uint8, got 'int4'"):
        QuantConfig(activation_type="int4")


def test_bool_in_check_batch_sizes_is_rejected():
    with pytest.raises(ConfigError):
        ExportConfig(check_batch_sizes=[1, True])


# -- overrides --------------------------------------------------------------------------


def test_from_yaml_with_overrides(tmp_path):
    path = write(tmp_path, "teacher:\n  epochs: 10\n  lr: 0.5\n")
    recipe = Recipe.from_yaml(path, ["teacher.epochs=3", "distill.arch_args.width=8", "seed=7"])
    assert recipe.teacher.epochs == 3  # overridden
    assert recipe.teacher.lr == 0.5  # kept from the file
    assert recipe.distill.arch_args == {"width": 8}  # section created on the way
    assert recipe.seed == 7


def test_default_with_overrides():
    recipe = Recipe.default(["bench.runs=5", "export.check_batch_sizes=[2, 3]", "teacher.weights=t.pt"])
    assert recipe.bench.runs == 5
    assert recipe.export.check_batch_sizes == [2, 3]
    assert recipe.teacher.weights == "t.pt"
    assert recipe.teacher.epochs == 10  # untouched value still from default.yaml


@pytest.mark.parametrize(
    "item, expected",
    [
        ("teacher.epochs=3", 3),
        ("teacher.lr=0.5", 0.5),
        ("teacher.augment=true", True),
        ("teacher.arch=resnet20", "resnet20"),
        ("teacher.weights=", None),  # empty value -> None
        ("teacher.weights=null", None),
        ("teacher.arch_args={width: 2}", {"width": 2}),
        ("teacher.arch=a=b", "a=b"),  # only the first '=' splits
    ],
)
def test_apply_override_parses_value_as_yaml(item, expected):
    raw = {"teacher": {"epochs": 10}}
    apply_override(raw, item)
    key = item.split("=", 1)[0].split(".")[1]
    assert raw["teacher"][key] == expected
    assert type(raw["teacher"][key]) is type(expected)


def test_apply_override_creates_missing_sections():
    raw = {}
    apply_override(raw, "distill.arch_args.width=4")
    assert raw == {"distill": {"arch_args": {"width": 4}}}


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("teacher.epochs", "expects KEY=VALUE"),
        ("=3", "expects KEY=VALUE"),
        ("teacher.epochs.x=1", "'epochs' is not a section"),
        ("teacher.arch=[unclosed", "cannot parse value"),
    ],
)
def test_apply_override_errors(item, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        apply_override({"teacher": {"epochs": 10}}, item)


def test_override_of_unknown_key_is_rejected(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"unknown key 'teacher\.epoch'"):
        Recipe.from_yaml(path, ["teacher.epoch=3"])


def test_override_with_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match=r"key 'teacher\.epochs' .* must be of type int, got 'ten' \(str\)"):
        Recipe.default(["teacher.epochs=ten"])


def test_an_error_that_only_the_overrides_bring_names_set_not_the_recipe(tmp_path):
    path = write(tmp_path, "teacher:\n  epochs: 2\n")
    for build in (lambda items: Recipe.from_yaml(path, items), Recipe.default):
        with pytest.raises(ConfigError, match=r"key 'teacher\.lr' in --set must be of type float"):
            build(["teacher.epochs=3", "teacher.lr=fast"])
    bad = write(tmp_path, "teacher:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"key 'teacher\.epochs' in .*recipe\.yaml must be of type int"):
        Recipe.from_yaml(bad, ["teacher.lr=0.1"])  # the recipe's own error keeps its file's name
    assert Recipe.from_yaml(bad, ["teacher.epochs=3"]).teacher.epochs == 3  # --set may mend the recipe


@pytest.mark.parametrize("text", ["{width:32}", "[{arch: tinycnn, arch_args: {depth:2}}]"])
def test_a_flow_mapping_without_spaces_after_colons_is_explained(tmp_path, text):
    """YAML reads {width:32} as the key 'width:32' with no value: the error says to add the space."""
    with pytest.raises(ConfigError, match=r"as one key without a value; put a space after the colon: \{\w+: \d+\}"):
        Recipe.default([f"teacher.arch_args={text}"])
    with pytest.raises(ConfigError, match=r"recipe\.yaml: YAML reads '\w+:\d+' as one key"):
        Recipe.from_yaml(write(tmp_path, f"distill:\n  extra_teachers: {text}\n"))
    assert Recipe.default(["teacher.arch_args={width: 2}"]).teacher.arch_args == {"width": 2}


def test_scientific_notation_float():
    assert Recipe.default(["distill.lr=1e-3"]).distill.lr == pytest.approx(0.001)


# -- safety and file errors -------------------------------------------------------------


def test_python_object_tag_is_refused_and_never_run(tmp_path, canary):
    payload = f'!!python/object/apply:os.system ["touch {canary}"]\n'
    path = write(tmp_path, payload)
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    assert str(path) in str(info.value) and "not valid YAML" in str(info.value)
    assert not canary.exists()
    # the same tag nested under a key
    nested = write(tmp_path, f'teacher:\n  arch: !!python/object/apply:os.system ["touch {canary}"]\n', "n.yaml")
    with pytest.raises(ConfigError):
        Recipe.from_yaml(nested)
    assert not canary.exists()
    # control: the payload is real, an unsafe loader would have run it
    yaml.unsafe_load(payload)
    assert canary.exists()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("teacher: [epochs\n", "is not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping of stage names to settings, got list"),
        ("just a string\n", "got str"),
    ],
)
def test_malformed_yaml(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.from_yaml(tmp_path)  # a folder is not a recipe file


def test_config_error_is_an_edgekd_error():
    assert issubclass(ConfigError, EdgekdError) and ConfigError.exit_code == 2


# -- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["name=custom", "seed=3", "data.limit_train=100", "data.path=/data/x", "teacher.weights=w.safetensors",
         "teacher.arch_args={width: 0.5}", "distill.optimizer=sgd", "distill.alpha=0.0", "export.atol=1.0e-5",
         "export.check_batch_sizes=[3]", "quantize.activation_type=int8", "quantize.enabled=false",
         "bench.min_seconds=0"],
    ],
    ids=["default", "customized"],
)
def test_to_yaml_from_yaml_round_trip(tmp_path, overrides):
    recipe = Recipe.default(overrides)
    path = write(tmp_path, recipe.to_yaml(), "resolved.yaml")
    again = Recipe.from_yaml(path)
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    if overrides:
        assert again.export.atol == 1e-5 and again.quantize.enabled is False and again.data.path == "/data/x"


def test_to_dict_is_plain_data():
    d = Recipe.default().to_dict()
    assert set(d) == {"name", "seed", "plugins", "deterministic", "device", "compute", "data", "teacher", "distill", "prune", "quantize", "export", "bench"}
    assert d["deterministic"] is False
    assert d["teacher"]["arch"] == "resnet8"
    assert "_stage" not in d["teacher"]


def test_prune_section_is_validated():
    recipe = Recipe.from_dict({"prune": {"enabled": True, "ratio": 0.3, "protect": ["layers.0.conv1"]}})
    assert recipe.prune.enabled and recipe.prune.ratio == 0.3 and recipe.prune.protect == ["layers.0.conv1"]
    with pytest.raises(ConfigError, match="unknown prune.importance 'l3'; available: l1, l2, bn_scale"):
        Recipe.from_dict({"prune": {"importance": "l3"}})
    with pytest.raises(ConfigError, match="prune.ratio must be between 0 and 1"):
        Recipe.from_dict({"prune": {"ratio": 1.0}})


def test_file_paths_in_a_recipe_are_relative_to_its_folder(tmp_path, monkeypatch):
    """models/.../transfer.yaml names its pretrained file next to itself: it must run from any folder."""
    folder = tmp_path / "recipes"
    (folder / "pretrained").mkdir(parents=True)
    (folder / "pretrained" / "w.safetensors").write_bytes(b"x")
    (folder / "teacher.safetensors").write_bytes(b"x")
    path = write(folder, "teacher:\n  weights: teacher.safetensors\n  transfer: {pretrained: pretrained/w.safetensors}\n"
                         "distill:\n  extra_teachers: [{arch: resnet8, weights: missing.safetensors}]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = Recipe.from_yaml(path, ["data.path=data.npz"])
    assert recipe.teacher.weights == str(folder / "teacher.safetensors")
    assert recipe.teacher.transfer.pretrained == str(folder / "pretrained" / "w.safetensors")
    # not next to the recipe: still relative to the current folder (and reported missing there later)
    assert recipe.distill.extra_teachers[0]["weights"] == "missing.safetensors"
    assert recipe.data.path == "data.npz"  # a command-line value means the current folder


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "models").rglob("*.yaml")))
def test_every_shipped_recipe_loads(path):
    """The recipes in models/ are what the README and the benchmarks point users to: a key
    renamed in the code must not leave one of them failing at its first step."""
    recipe = Recipe.from_yaml(REPO / path)
    assert recipe.name and recipe.distill.arch
