"""Issue 28: `edgekd export --skip-bad` (weights with an image-folder dataset) and `edgekd bench
--data FOLDER --skip-bad` skip files that cannot be decoded, count them and name the first ones
(up to 5, then "and N more"); without the flag the first bad file is refused in one line that
names the flag. And the compress data stage names the first files it skipped."""

from __future__ import annotations

import json

import pytest

from clitools import TINY_RECIPE, cli, refused
from ownfolder import write_class_folders

BAD = 7  # more than a skip summary names


@pytest.fixture
def folder_with_bad_files(tmp_path):
    folder = tmp_path / "own"
    classes = write_class_folders(folder, classes=3, per_class=12, size=28)
    good = (folder / classes[0] / "000.png").read_bytes()
    for i in range(BAD):
        target = folder / classes[i % 3] / f"bad{i}.png"
        if i % 2:
            target.write_bytes(good[: len(good) // 2])  # truncated
        else:
            target.write_text("not an image")  # unreadable
    return folder


def _weights(path):
    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    save_weights(build_model("tinycnn", in_channels=3, num_classes=3, width=4), path)
    return path


def test_export_and_bench_skip_bad_files_and_name_the_first(tmp_path, folder_with_bad_files):
    folder = folder_with_bad_files
    weights = _weights(tmp_path / "w.safetensors")
    export = ["export", "--onnx", "--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", "--data", folder,
              "-o", tmp_path / "m.onnx"]
    refused(cli(*export), "bad0.png", "--skip-bad")
    result = cli(*export, "--skip-bad")
    assert result.exit_code == 0, result.output
    summary = next(line for line in result.output.splitlines() if line.startswith("skipped"))
    assert f"skipped {BAD} bad image(s)" in summary and "bad0.png" in summary and f"and {BAD - 5} more" in summary
    assert (tmp_path / "m.onnx").is_file()

    bench = ["bench", tmp_path / "m.onnx", "--data", folder, "--warmup", "0", "--runs", "2", "--min-seconds", "0",
             "--json"]
    refused(cli(*bench), "bad", "--skip-bad")
    result = cli(*bench, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert f"skipped {BAD} unreadable image(s)" in result.output and f"and {BAD - 5} more" in result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["models"][0]["top1"] is not None


def test_compress_data_stage_names_the_first_files_it_skipped(tmp_path, folder_with_bad_files):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.format(data=folder_with_bad_files))
    out = tmp_path / "run"
    result = cli("compress", recipe, "--out", out, "--no-progress", "--set", "data.skip_bad=true",
                 "--set", "data.calib_size=8", "--set", "data.workers=0")
    assert result.exit_code == 0, result.output[-3000:]
    line = next(line for line in result.output.splitlines() if "[data] skipped" in line)
    assert f"skipped {BAD} bad image(s)" in line and "first: " in line and f"and {BAD - 5} more" in line
    record = json.loads((out / "report.json").read_text())["stages"]["data"]
    assert len(record["skipped_files"]) == 5 and all("bad" in f for f in record["skipped_files"])
