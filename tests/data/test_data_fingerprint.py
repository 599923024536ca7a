"""`edgekd compress --resume` checks the data, not only the recipe: the data stage records a
fingerprint of what it read (the file list with sizes and mtimes, the loaded arrays' hashes),
and a run whose data changed while it was stopped is refused (exit 2, one line naming what
changed) before anything runs. Unchanged data resumes; a run recorded before fingerprints
existed resumes with a note.

Each run here is stopped right after its data stage (the teacher stage raises Ctrl-C), through
the real CLI in this process, so the data stage, preflight and the resume checks are real."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from imagefiles import draw, save, write_folder

DATA_FINGERPRINT = "state/data-fingerprint.json.gz"  # the details; the digests are in progress.json
TINY = {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 8, "lr": 0.01}


def edgekd(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgekd: error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def stop_after_data(monkeypatch):
    """The teacher stage stops the run (Ctrl-C): the data stage is done, nothing after it."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgekd.pipeline.stages.teacher.run", stop)


def stopped_run(tmp_path: Path, data: dict) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "fp", "seed": 1, "data": {"calib_size": 8, **data},
                                      "teacher": TINY, "distill": TINY, "quantize": {"max_drop": None}}))
    out = tmp_path / "run"
    result = edgekd("compress", recipe, "--out", out, "--no-progress")
    assert result.exit_code == 130, result.output
    assert "data" in json.loads((out / "state/progress.json").read_text())["done"]
    return out


def resume(out: Path):
    return edgekd("compress", "--resume", out, "--no-progress")


def assert_resumes(out: Path) -> None:
    """Past the data checks: the run goes on to the teacher stage (which stops it again)."""
    result = resume(out)
    assert result.exit_code == 130, result.output
    assert "[data] done in an earlier run; skipped" in result.stderr and "its data changed" not in result.stderr


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images", per_class=6, test_per_class=2)


@pytest.fixture
def folder_run(tmp_path, folder, stop_after_data):
    return stopped_run(tmp_path, {"name": "imagefolder", "path": str(folder), "image_size": 32})


def test_the_data_stage_records_the_fingerprint(folder_run):
    record = json.loads((folder_run / "state/progress.json").read_text())["done"]["data"]
    assert record["fingerprint"]["files"] == 3 * (6 + 2)
    assert len(record["fingerprint"]["files_sha256"]) == 64 and len(record["fingerprint"]["arrays_sha256"]) == 64
    assert (folder_run / DATA_FINGERPRINT).is_file()


def test_class_folder_added_is_refused(folder_run, folder):
    assert_resumes(folder_run)  # unchanged: the run goes on
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        save(folder / split / "zebra" / "000.png", draw(0, (32, 32), rng), "PNG", "RGB")
    before = sorted(p.name for p in folder_run.rglob("*"))
    result = resume(folder_run)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert "its data changed since the data stage ran" in line
    assert "class folder 'zebra' added" in line
    assert "file(s) added in train/ (first: train/zebra/000.png)" in line
    assert sorted(p.name for p in folder_run.rglob("*")) == before  # the run is not touched


def test_changed_files_are_refused_and_named(folder_run, folder):
    files = sorted((folder / "train" / "square").iterdir())[:3]
    for file in files:  # the same size, a new mtime: what a re-export of the images does
        os.utime(file, ns=(os.stat(file).st_atime_ns, os.stat(file).st_mtime_ns + 10**9))
    line = error_line(result := resume(folder_run))
    assert result.exit_code == 2
    assert f"3 file(s) changed in train/ (first: train/square/{files[0].name})" in line


def test_removed_file_is_refused(folder_run, folder):
    removed = sorted((folder / "test" / "star").iterdir())[0]
    removed.unlink()
    line = error_line(result := resume(folder_run))
    assert result.exit_code == 2
    assert f"1 file(s) removed in test/ (first: test/star/{removed.name})" in line


def test_manifest_label_change_is_refused(tmp_path, folder, stop_after_data):
    rows = ["path,label,split"] + [f"{p.relative_to(folder)},{p.parent.name},{p.parts[-3]}"
                                   for p in sorted(folder.glob("*/*/*"))]
    manifest = folder / "data.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = stopped_run(tmp_path, {"name": "manifest", "path": str(manifest), "image_size": 32})
    first = rows[1].split(",")
    rows[1] = f"{first[0]},star,{first[2]}"  # a relabelled image: no file on disk changed
    manifest.write_text("\n".join(rows) + "\n")
    line = error_line(result := resume(out))
    assert result.exit_code == 2
    assert f"1 file(s) changed in the {first[2]} split (first: {first[0]}, class '{first[1]}' -> 'star')" in line


def write_npz(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.arange(120) % 3
    x = rng.integers(0, 40, (120, 28, 28), dtype=np.uint8)
    for i, label in enumerate(y):
        x[i, 9 * label : 9 * label + 9] += 150  # class k: a bright band k
    np.savez(path, x=x, y=y, class_names=np.array(["a", "b", "c"]))


def test_npz_changed_is_refused(tmp_path, stop_after_data):
    data = tmp_path / "data.npz"
    write_npz(data, seed=0)
    out = stopped_run(tmp_path, {"name": "npz", "path": str(data)})
    assert_resumes(out)
    write_npz(data, seed=1)  # the same shapes and labels, other pixels
    line = error_line(result := resume(out))
    assert result.exit_code == 2
    assert f"{data}: the train split's images or labels differ" in line


def test_embedded_subset_is_fingerprinted_and_resumes_unchanged(tmp_path, stop_after_data):
    out = stopped_run(tmp_path, {"limit_train": 300, "limit_test": 60})
    record = json.loads((out / "state/progress.json").read_text())["done"]["data"]["fingerprint"]
    assert record["files"] is None and len(record["arrays_sha256"]) == 64
    assert_resumes(out)


def test_run_without_fingerprint_resumes_with_a_note(folder_run):
    """A run recorded by an edgekd before this check: nothing to compare, said so."""
    progress = folder_run / "state/progress.json"
    state = json.loads(progress.read_text())
    del state["done"]["data"]["fingerprint"]
    progress.write_text(json.dumps(state))
    (folder_run / DATA_FINGERPRINT).unlink()
    result = resume(folder_run)
    assert result.exit_code == 130, result.output
    assert "did not record its data" in result.output


def test_lost_details_still_refuse(folder_run, folder):
    """Without the details file the digests still tell a change, less specifically."""
    (folder_run / DATA_FINGERPRINT).unlink()
    shutil.rmtree(folder / "train" / "circle")
    shutil.rmtree(folder / "test" / "circle")
    line = error_line(result := resume(folder_run))
    assert result.exit_code == 2
    assert "the list of files changed" in line


def test_corrupt_fingerprint_record_is_refused(folder_run):
    progress = folder_run / "state/progress.json"
    state = json.loads(progress.read_text())
    state["done"]["data"]["fingerprint"] = "not a record"
    progress.write_text(json.dumps(state))
    line = error_line(result := resume(folder_run))
    assert result.exit_code == 2
    assert "is corrupt (bad data fingerprint)" in line
