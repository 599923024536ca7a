"""`edgekd compress --baseline` on a tiny run: the student is also trained alone, and the
terminal table, report.md, results.csv and report.json show both students and the gain.

With alpha 0 (cross-entropy only) "distillation" is training alone, so the two students
must come out bit for bit the same: the same initial weights, data order, augmentation,
schedule and optimizer steps, which is what makes the gain a fair comparison."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgekd.cli import main


def test_baseline_flag_trains_the_student_alone_and_reports_the_gain(tiny_run_inputs, tmp_path):
    from edgekd.io.artifacts import load_state_dict

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(tiny_run_inputs / "tiny.yaml"), "--baseline", "--set",
                                       "distill.alpha=0", "--set", "distill.augment=true", "--out", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "student alone (fp32)" in result.output and "student (fp32)" in result.output
    report = json.loads((out / "report.json").read_text())
    distill = report["stages"]["distill"]
    assert report["recipe"]["distill"]["baseline"] is True
    assert distill["gain_split"] == "test" and distill["gain_points"] == 0.0 and distill["val_gain_points"] == 0.0
    alone = distill["baseline"]
    assert alone["steps"] == distill["steps"] == 2 * 5  # 135 images, batches of 32 (the last of 7): 5 per epoch
    assert alone["test_top1"] == distill["test_top1"] == report["student_alone"]["top1"]
    assert report["student_alone"]["params"] == distill["params"]
    assert [m["stage"] for m in report["models"]] == ["teacher", "student", "int8"]  # bench rows only
    student, twin = load_state_dict(out / "student.safetensors"), load_state_dict(out / "student-alone.safetensors")
    assert set(student) == set(twin) and all(bool((student[k] == twin[k]).all()) for k in student)
    text = (out / "report.md").read_text()
    assert "| student alone (fp32) |" in text and "## Distillation gain" in text and "+0.00 points" in text
    assert "student-alone,student-alone," in (out / "results.csv").read_text()
    assert not list((out / "state").glob("*.ckpt"))  # the baseline's checkpoint went with the stage's


def test_a_run_stopped_while_the_student_alone_trains_resumes_it_from_its_checkpoint(tiny_run_inputs, tmp_path,
                                                                                      monkeypatch):
    import edgekd.io.artifacts as artifacts
    from edgekd.pipeline.chain import compress
    from edgekd.recipe import Recipe

    save = artifacts.save_checkpoint

    def stop_after_the_first_epoch_alone(path, state):
        save(path, state)
        if str(path).endswith("distill.baseline.ckpt") and state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "save_checkpoint", stop_after_the_first_epoch_alone)
    recipe = Recipe.from_yaml(tiny_run_inputs / "tiny.yaml", ["distill.baseline=true"])
    run_dir = tmp_path / "run"
    try:
        compress(recipe, run_dir, progress=False, log=lambda line: None)
    except KeyboardInterrupt:
        pass
    assert (run_dir / "state" / "distill.baseline.ckpt").is_file()
    monkeypatch.setattr(artifacts, "save_checkpoint", save)
    lines = []
    report = compress(recipe, run_dir, resume=True, progress=False, log=lines.append)
    assert any("resuming after epoch 1 of 2" in line and "distill.baseline.ckpt" in line for line in lines)
    assert report["student_alone"]["top1"] is not None and "gain_points" in report["stages"]["distill"]
    assert not list((run_dir / "state").glob("*.ckpt"))
