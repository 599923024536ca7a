"""The recipe's `train:` section (device, precision, threads: ComputeConfig) is now `compute:`.
The old name is still read, with a deprecation warning that names the new one; a recipe that
gives both is refused with one line and exit 2, before any run directory exists."""

from __future__ import annotations

import logging

import pytest

from clitools import cli, refused
from edgekd.errors import ConfigError
from edgekd.pipeline.resume import check_changes
from edgekd.recipe import Recipe


@pytest.fixture
def warnings_logged():
    """The messages the 'edgekd' logger emits during the test (whatever the CLI set up before)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("edgekd")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _deprecation(records) -> list[str]:
    return [m for m in records if "deprecated" in m]


def test_the_new_name_is_read_without_a_warning(tmp_path, warnings_logged):
    path = tmp_path / "r.yaml"
    path.write_text("compute: {threads: 2, precision: fp32}\n")
    recipe = Recipe.from_yaml(path)
    assert recipe.compute.threads == 2 and recipe.compute.precision == "fp32"
    assert Recipe.default(["compute.threads=3"]).compute.threads == 3
    assert "\ncompute:" in recipe.to_yaml() and "\ntrain:" not in recipe.to_yaml()
    assert _deprecation(warnings_logged) == []


def test_the_old_name_is_read_with_a_deprecation_warning(tmp_path, warnings_logged):
    path = tmp_path / "r.yaml"
    path.write_text("train: {threads: 2, precision: fp32}\ndistill: {epochs: 1}\n")
    recipe = Recipe.from_yaml(path)
    assert recipe.compute.threads == 2 and recipe.compute.precision == "fp32" and recipe.distill.epochs == 1
    assert recipe == Recipe.from_dict({"compute": {"threads": 2, "precision": "fp32"}, "distill": {"epochs": 1}})
    (message,) = _deprecation(warnings_logged)
    assert "'train'" in message and "'compute'" in message and "removed" in message and str(path) in message


def test_set_train_key_still_works_with_the_warning(tmp_path, warnings_logged):
    assert Recipe.default(["train.threads=2"]).compute.threads == 2
    (message,) = _deprecation(warnings_logged)
    assert "'train.threads'" in message and "'compute.threads'" in message and "removed" in message
    path = tmp_path / "r.yaml"  # the new section in the file, the old name on the command line: one section
    path.write_text("compute: {precision: fp32}\n")
    recipe = Recipe.from_yaml(path, ["train.threads=4"])
    assert (recipe.compute.threads, recipe.compute.precision) == (4, "fp32")


def test_both_names_are_refused():
    with pytest.raises(ConfigError, match="both 'train:' and 'compute:'.*keep only 'compute:'"):
        Recipe.from_dict({"train": {"threads": 2}, "compute": {"threads": 2}})


def test_both_names_in_a_recipe_file_exit_2_before_the_run_directory(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: {threads: 2}\ncompute: {threads: 1}\n")
    out = tmp_path / "run"
    refused(cli("compress", path, "--out", out, "--no-progress"), "both 'train:' and 'compute:'", str(path))
    assert not out.exists()


def test_the_cli_shows_the_warning_on_stderr(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: {threads: 2}\n")
    result = cli("compress", path, "--out", tmp_path / "run", "--set", "data.name=no-such-dataset")
    assert result.exit_code == 2
    assert "'train' is deprecated, use 'compute'" in result.output


def test_a_run_started_before_the_rename_resumes_unchanged():
    """state/progress.json of an older run records the section as `train`: not a change."""
    recipe = Recipe.default(["compute.threads=2"]).to_dict()
    old = {("train" if key == "compute" else key): value for key, value in recipe.items()}
    assert check_changes({"recipe": old, "done": {"data": {}, "teacher": {}}}, recipe, "run") == {}
