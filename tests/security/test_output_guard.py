"""Writing over what is not ours, round three (issue 25, class 2): one output guard
(edgekd.io.outputs) for every command that writes.

Whatever --force says, an output is never a file of a run that the command reads, nor a
name that any edgekd run owns (state/, recipe.yaml, weights, eval.npz, the top-level models
its bench measures), nor an input, nor anything but a regular file or a new path; and
`compress --force` never replaces a run that holds one of its inputs. Every refusal: exit 2,
one line, nothing changed.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

import edgekd
from clitools import cli, refused
from edgekd.errors import ConfigError


def snapshot(folder: Path) -> dict:
    """Every path under `folder` -> (kind, bytes of a regular file)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        kind = "link" if path.is_symlink() else "file" if path.is_file() else "dir" if path.is_dir() else "other"
        entries[str(path.relative_to(folder))] = (kind, path.read_bytes() if kind == "file" else None)
    return entries


@pytest.fixture(scope="module")
def finished(tiny_run_inputs, tmp_path_factory) -> Path:
    """One complete tiny run (conftest's recipe); tests work on copies."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = cli("compress", tiny_run_inputs / "tiny.yaml", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def export(*args):
    return cli("export", "--onnx", *args, "--no-progress")


# -- export: a run it exports from ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["teacher.safetensors", "student.safetensors", "state/progress.json",
                                  "recipe.yaml", "eval.npz", "model.int8.onnx", "report.json"])
def test_export_never_writes_over_a_file_of_the_run_it_reads(run, name):
    before = snapshot(run)
    refused(export(run, "-o", run / name, "--force"), str(run / name))
    assert snapshot(run) == before
    assert cli("compress", "--resume", run, "--no-progress").exit_code == 0  # the run is still whole


@pytest.mark.parametrize("name", ["state/notes.onnx", "teacher.extra1.safetensors", "student.int8.custom.onnx",
                                  ".model.int8.onnx.x1.tmp"])
def test_export_refuses_new_names_that_the_run_owns(run, name):
    """state/ is edgekd's; every top-level .onnx is benched by the run's bench stage (and shown
    in its report); --resume removes temp-file names: none is the user's to write."""
    before = snapshot(run)
    refused(export(run, "-o", run / name, "--force"), "edgekd run")
    assert snapshot(run) == before


def test_a_new_file_of_the_user_inside_the_run_and_export_s_own_folder_are_fine(run):
    notes = run / "mine" / "student.onnx"
    notes.parent.mkdir()
    result = export(run, "-o", notes)
    assert result.exit_code == 0, result.output
    assert notes.is_file()
    default = run / "export" / "student.fp32.onnx"
    assert export(run).exit_code == 0 and default.is_file()
    refused(export(run), "already exists", "--force")
    assert export(run, "--force").exit_code == 0  # export's own folder: replaced when asked


def test_through_a_link_or_a_hard_link_to_a_run_file(run, tmp_path):
    before = snapshot(run)
    (tmp_path / "link.onnx").symlink_to(run / "teacher.safetensors")
    os.link(run / "state" / "progress.json", tmp_path / "hard.onnx")
    refused(export(run, "-o", tmp_path / "link.onnx", "--force"), "teacher.safetensors")
    refused(export(run, "-o", tmp_path / "hard.onnx", "--force"), "progress.json")
    assert snapshot(run) == before


# -- export: its own input, special files ------------------------------------------------------------


@pytest.fixture
def weights(tmp_path) -> Path:
    import torch

    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_weights(build_model("tinycnn", in_channels=1, num_classes=10, width=4), path)
    return path


def export_weights(weights, *args):
    return export("--weights", weights, "--arch", "tinycnn", "--arch-args", "{width: 4}", *args)


def test_export_never_writes_over_its_own_weights(weights, tmp_path):
    before = weights.read_bytes()
    refused(export_weights(weights, "-o", weights, "--force"), "is the input", "w.safetensors")
    (tmp_path / "via").symlink_to(tmp_path, target_is_directory=True)
    refused(export_weights(weights, "-o", tmp_path / "via" / "w.safetensors", "--force"), "is the input")
    assert weights.read_bytes() == before


def test_export_writes_only_regular_files_or_new_paths(weights, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(export_weights(weights, "-o", fifo, "--force"), "not a regular file")
    assert fifo.is_fifo()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        refused(export_weights(weights, "-o", tmp_path / "sock", "--force"), "not a regular file")
        assert (tmp_path / "sock").is_socket()
    finally:
        sock.close()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x.onnx")
    refused(export_weights(weights, "-o", tmp_path / "dangling", "--force"), "link to nothing")
    assert (tmp_path / "dangling").is_symlink() and not (tmp_path / "nowhere").exists()


def test_export_of_weights_inside_a_run_keeps_the_run_s_names(run):
    """--weights RUN/teacher.safetensors defaults to RUN/teacher.fp32.onnx: the run's own teacher model."""
    before = snapshot(run)
    refused(export("--weights", run / "teacher.safetensors", "--arch", "tinycnn", "--arch-args", "{width: 4}",
                   "--data", run / "eval.npz", "--force"), "teacher.fp32.onnx", "edgekd run")
    assert snapshot(run) == before


# -- bench: any run's own names --------------------------------------------------------------------


def test_bench_never_writes_a_run_s_state_even_of_a_run_it_does_not_read(run, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(run / "model.fp32.onnx", model)
    before = snapshot(run)
    refused(cli("bench", model, "--runs", "2", "--warmup", "0", "--min-seconds", "0", "--no-progress",
                "--json-out", run / "state" / "progress.json", "--force"), "edgekd run")
    assert snapshot(run) == before


# -- compress --force: the run it replaces holds none of its inputs -----------------------------------


@pytest.mark.parametrize("key", ["teacher.onnx", "distill.extra_teachers"])
def test_force_keeps_an_onnx_teacher_inside_the_run_it_replaces(run, tiny_run_inputs, key):
    teacher = run / "teacher.onnx"
    shutil.copy(run / "teacher.fp32.onnx", teacher)
    setting = (f"teacher.onnx={teacher}" if key == "teacher.onnx"
               else f"distill.extra_teachers=[{{onnx: {teacher}}}]")
    before = snapshot(run)
    refused(cli("compress", tiny_run_inputs / "tiny.yaml", "--set", setting, "--out", run, "--force",
                "--no-progress"), key, "inside the run directory")
    assert snapshot(run) == before


def test_force_keeps_the_recipe_file_inside_the_run_it_replaces(run):
    before = snapshot(run)
    refused(cli("compress", run / "recipe.yaml", "--out", run, "--force", "--no-progress"), "RECIPE",
            "inside the run directory")
    with pytest.raises(ConfigError, match="inside the run directory"):
        edgekd.compress(str(run / "recipe.yaml"), run, force=True)
    assert snapshot(run) == before


def test_a_run_inside_its_own_image_folder_is_refused(tmp_path, tiny_run_inputs):
    """A run directory inside the image folder it reads: its next scan would find a class
    'run' (holding the report's pareto.png)."""
    import numpy as np
    from PIL import Image

    images, rng = tmp_path / "images", np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(("ant", "bee", "cat")):
            (images / split / name).mkdir(parents=True)
            for i in range(12 if split == "train" else 4):
                pixels = (rng.integers(0, 60, (8, 8)) + 60 * label).astype(np.uint8)
                Image.fromarray(pixels).save(images / split / name / f"{i}.png")
    before = snapshot(tmp_path)
    refused(cli("compress", tiny_run_inputs / "tiny.yaml", "--data", images, "--out", images / "train" / "run",
                "--no-progress"), "inside data.name")
    assert snapshot(tmp_path) == before
