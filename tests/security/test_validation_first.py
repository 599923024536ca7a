"""Validated first, diagnosed right, resumed honestly (issue 17, classes 4, 6 and 7).

Weights, architectures, the opset, pruning and the data are checked before the run
directory exists and before any training; a non-finite loss names its likely cause; a
resume whose recipe changed is refused unless only stages still to run read the change,
which is then applied and recorded. Every refusal is exit 2 with one line, and writes
nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clitools import TINY_RECIPE, cli, refused
from edgekd.errors import ConfigError, ModelFileError, TrainingDiverged


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def images(n: int, seed: int, size: int = 8, flat: bool = False, constant: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.integers(0, 60, (n, 1, size, size)) + y[:, None, None, None] * 60).astype(np.uint8)
    if flat:  # every image one value, the values differ
        x[:] = x[:, :, :1, :1]
    if constant is not None:
        x[:] = constant
    return x, y.astype(np.int64)


def dataset(path: Path, **kwargs) -> Path:
    (tx, ty), (sx, sy) = images(120, 0, **kwargs), images(30, 1, **kwargs)
    np.savez(path, train_x=tx, train_y=ty, test_x=sx, test_y=sy)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "tiny.yaml").write_text(TINY_RECIPE.format(data=dataset(folder / "tiny.npz")))
    return folder


def compress_refused(work: Path, tmp_path: Path, *args, expected=()) -> str:
    """`edgekd compress tiny.yaml ARGS` is refused and creates nothing, beside the inputs either."""
    out = tmp_path / "run"
    before = snapshot(work)
    line = refused(cli("compress", work / "tiny.yaml", *args, "--out", out, "--no-progress"), *expected)
    assert not out.exists() and snapshot(work) == before
    return line


def weights_file(path: Path, *, width=4, classes=3, poison=False) -> Path:
    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    model = build_model("tinycnn", in_channels=1, num_classes=classes, width=width)
    if poison:
        with torch.no_grad():
            model.fc.weight[0, 0] = float("nan")
    save_weights(model, path)
    return path


# -- weights: readable, fitting, finite, before anything is written -------------------------------


@pytest.mark.parametrize("case, expected", [
    ("garbage", ["teacher.weights", "not a valid safetensors file"]),
    ("other-width", ["teacher.weights", "do not fit", "shape mismatch", "arch_args"]),
    ("other-classes", ["teacher.weights", "3 classes", "teacher.transfer"]),
    ("nan", ["teacher.weights", "non-finite", "fc.weight"]),
    ("folder", ["teacher.weights", "not a regular file"]),
])
def test_teacher_weights_are_checked_before_the_run(work, tmp_path, case, expected):
    path = tmp_path / "w.safetensors"
    if case == "garbage":
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    elif case == "folder":
        path.mkdir()
    else:
        weights_file(path, width=8 if case == "other-width" else 4, classes=10 if case == "other-classes" else 3,
                     poison=case == "nan")
    compress_refused(work, tmp_path, "--set", f"teacher.weights={path}", "--set", "teacher.epochs=0", expected=expected)


def test_transfer_weights_are_checked_before_the_run(work, tmp_path):
    path = tmp_path / "pretrained.pt"
    path.write_bytes(b"not a torch file")
    compress_refused(work, tmp_path, "--set", f"teacher.transfer={{pretrained: '{path}'}}",
                     expected=["teacher.transfer.pretrained", str(path)])
    weights_file(path.with_suffix(".safetensors"), width=8)  # another width: the backbone does not fit
    compress_refused(work, tmp_path, "--set", f"teacher.transfer={{pretrained: '{path.with_suffix('.safetensors')}'}}",
                     expected=["teacher.transfer.pretrained", "do not fit the backbone"])


def test_extra_teacher_weights_are_checked_before_the_teacher_trains(work, tmp_path):
    path = weights_file(tmp_path / "extra.safetensors", width=8)
    entry = f"distill.extra_teachers=[{{arch: tinycnn, arch_args: {{width: 4}}, weights: '{path}', epochs: 0}}]"
    compress_refused(work, tmp_path, "--set", entry, expected=["distill.extra_teachers[0].weights", "do not fit"])


# -- architectures, the opset, pruning: before training ---------------------------------------------


class Boom(Exception):
    pass


class Exploding(torch.nn.Module):
    def forward(self, x):
        raise Boom("my layer cannot take this input")


def exploding(in_channels, num_classes):
    return Exploding()


def flat_output(in_channels, num_classes):
    return torch.nn.Flatten()


@pytest.mark.parametrize("arch, expected", [
    ("test_validation_first:exploding", ["distill.arch", "cannot run", "Boom", "1x8x8"]),
    ("test_validation_first:flat_output", ["distill.arch", "expected logits of shape (2, 3)"]),
])
def test_a_student_that_cannot_run_on_the_data_is_refused(work, tmp_path, monkeypatch, arch, expected):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setitem(sys.modules, "test_validation_first", sys.modules[__name__])
    compress_refused(work, tmp_path, "--set", f"distill.arch={arch}", "--set", "distill.arch_args={}",
                     expected=expected)


def test_an_architecture_too_deep_for_the_image_size_is_refused(tmp_path):
    work = tmp_path / "in"
    work.mkdir()
    (work / "tiny.yaml").write_text(TINY_RECIPE.format(data=dataset(work / "two.npz", size=2)))
    compress_refused(work, tmp_path, "--set", "teacher.arch_args={width: 4}",
                     expected=["tinycnn", "cannot run on the data's 1x2x2 images"])


def test_an_opset_the_exporter_lacks_is_refused_in_one_line(work, tmp_path):
    compress_refused(work, tmp_path, "--set", "export.opset=99", expected=["export.opset"])


def test_the_opset_check_reads_the_installed_exporter(monkeypatch):
    from edgekd.pipeline.preflight import check_opset, max_torch_opset

    top = max_torch_opset()
    assert top is not None and top >= 17
    monkeypatch.setattr("edgekd.pipeline.preflight.exports_at", lambda opset: opset <= 18)  # no constants:
    monkeypatch.setattr(torch.onnx, "_constants", None)  # the exporter itself is asked
    assert max_torch_opset() == 18
    monkeypatch.undo()
    check_opset(17)
    with pytest.raises(ConfigError, match=f"export.opset {top + 1} is not supported by the installed torch"):
        check_opset(top + 1)
    for name in ("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", "ONNX_MAX_OPSET"):  # as in an older torch
        monkeypatch.setattr(torch.onnx._constants, name, 16, raising=False)
    with pytest.raises(ConfigError, match="goes up to opset 16"):
        check_opset(17)


def test_asking_the_exporter_prints_nothing(capfd):
    from edgekd.pipeline.preflight import exports_at

    assert exports_at(17) and not exports_at(99)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the TorchScript IR that torch prints on failure is swallowed


def test_pruning_problems_are_found_before_training(work, tmp_path):
    compress_refused(work, tmp_path, "--set", "prune.enabled=true", "--set", "prune.protect=[features.9]",
                     expected=["prune", "features.9"])


# -- data and numbers that would end in a misleading diagnosis -------------------------------------


@pytest.mark.parametrize("kind, expected", [("constant", "zero pixel variance"), ("flat", "single flat value")])
def test_constant_images_are_refused_before_training(tmp_path, kind, expected):
    work = tmp_path / "in"
    work.mkdir()
    data = dataset(work / "c.npz", **({"constant": 0} if kind == "constant" else {"flat": True}))
    (work / "tiny.yaml").write_text(TINY_RECIPE.format(data=data))
    compress_refused(work, tmp_path, expected=[expected])


@pytest.mark.parametrize("key", ["distill.temperature=.inf", "teacher.lr=.nan", "distill.lr=-.inf"])
def test_non_finite_lr_or_temperature_is_refused(work, tmp_path, key):
    compress_refused(work, tmp_path, "--set", key, expected=[key.split("=")[0]])


def test_preflight_refuses_any_non_finite_number():
    from edgekd.pipeline.preflight import check_finite_numbers

    check_finite_numbers({"a": 1.0, "b": [1, 2.5], "c": {"d": None}})
    with pytest.raises(ConfigError, match=r"^quantize.qat.lr must be a finite number, got inf$"):
        check_finite_numbers({"quantize": {"qat": {"lr": float("inf")}}})
    with pytest.raises(ConfigError, match=r"distill.terms\[1\].weight must be a finite number"):
        check_finite_numbers({"distill": {"terms": [{}, {"weight": float("nan")}]}})


def linear_fit(data, cfg, *, inputs_nan=False, poison_at=None):
    from edgekd.train.loop import cross_entropy_step, fit
    from edgekd.train.plumbing import RunOptions, TrainData

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    step = cross_entropy_step(model)
    calls = {"n": 0}

    def wrapped(images, labels, index):
        calls["n"] += 1
        if calls["n"] == poison_at:  # after this step's update the weights are inf
            with torch.no_grad():
                model.bias.fill_(float("inf"))
        return step(images, labels, index)

    train_x = data["train_x"].clone()
    if inputs_nan:
        train_x[5, 0] = float("nan")
    with pytest.raises(TrainingDiverged) as info:
        fit(model, wrapped, TrainData.of(train_x, data["train_y"], data["val_x"], data["val_y"]), cfg,
            RunOptions(progress=False, desc="distill"))
    return str(info.value)


def test_a_non_finite_loss_names_its_likely_cause(separable):
    from edgekd.train.config import TrainConfig

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, augment=False)
    message = linear_fit(separable, cfg, inputs_nan=True)
    assert "the inputs contain NaN or inf" in message and "lower lr will not help" in message
    message = linear_fit(separable, cfg, poison_at=3)
    # poisoned before the forward of step 3: the update of step 2 is the last that could have done it
    assert "loss became nan at epoch 1, step 3" in message and "the weights became non-finite at step 2" in message
    with pytest.MonkeyPatch.context() as mp:  # the recipe's range check is not what is tested here
        mp.setattr(TrainConfig, "__post_init__", lambda self: None)
        huge = TrainConfig(epochs=2, batch_size=16, lr=1e30, optimizer="sgd", augment=False)
    message = linear_fit(separable, huge)
    assert "the weights became non-finite at step 2: distill.lr 1e+30 is very large for sgd (usual: about 0.1)" \
        in message
    assert "loss itself" not in message


def test_nan_weights_at_export_are_named_not_blamed_on_the_exporter(tmp_path, tiny_spec, make_tiny_cnn):
    from edgekd.onnx_export import ExportConfig
    from edgekd.pipeline.context import Context
    from edgekd.pipeline.stage_inputs import ExportInputs
    from edgekd.pipeline.stages import export
    from edgekd.train.plumbing import TrainData

    class Splits:
        spec = tiny_spec

    model = make_tiny_cnn()
    with torch.no_grad():
        model.fc.bias[1] = float("nan")
    summary = {"params": 1, "macs": 1}
    images, labels = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    inputs = ExportInputs(Splits, TrainData.of(images, labels, images, labels),
                          {"teacher": (make_tiny_cnn(), "tinycnn", summary), "student": (model, "tinycnn", summary)})
    with pytest.raises(ModelFileError, match=r"the student \(tinycnn\) weights are non-finite .* 'fc.bias'"):
        export.run(Context(run_dir=tmp_path), ExportConfig(), inputs)
    assert not (tmp_path / "model.fp32.onnx").exists()


# -- resume is honest ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped(work, tmp_path_factory) -> Path:
    """A tiny run as if it had stopped after the distill stage."""
    from edgekd.pipeline.layout import STAGES
    from edgekd.pipeline.runstate import load_progress, save_progress

    out = tmp_path_factory.mktemp("stopped") / "run"
    result = cli("compress", work / "tiny.yaml", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    state = load_progress(out, STAGES)
    save_progress(out, {k: v for k, v in state["done"].items() if k in ("data", "teacher", "distill")},
                  torch_rng=state["torch_rng"])
    return out


@pytest.fixture
def run(stopped, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stopped, copy)
    return copy


@pytest.mark.parametrize("how", ["--set", "edited-recipe"])
def test_resume_refuses_changes_that_completed_stages_used(run, how):
    args = []
    if how == "--set":
        args = ["--set", "teacher.epochs=2", "--set", "distill.alpha=0.5", "--set", "bench.runs=3"]
    else:
        text = (run / "recipe.yaml").read_text()
        (run / "recipe.yaml").write_text(text.replace("seed: 0", "seed: 7", 1))
    before = snapshot(run)
    line = refused(cli("compress", "--resume", run, *args, "--no-progress"), "cannot resume")
    if how == "--set":
        assert "teacher.epochs (teacher)" in line and "distill.alpha (distill)" in line and "bench.runs" not in line
    else:
        assert "seed (data)" in line
    assert snapshot(run) == before


def test_resume_applies_and_records_changes_of_stages_still_to_run(run):
    result = cli("compress", "--resume", run, "--set", "bench.runs=3", "--set", "quantize.enabled=false",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert "[resume] bench.runs: 2 -> 3" in result.output
    state = json.loads((run / "state/progress.json").read_text())
    assert state["recipe_changes"] == [{"after": ["data", "teacher", "distill"], "changes": {
        "bench.runs": {"from": 2, "to": 3, "stage": "bench"},
        "quantize.enabled": {"from": True, "to": False, "stage": "quantize"}}}]
    report = json.loads((run / "report.json").read_text())
    assert report["recipe"]["bench"]["runs"] == 3 and report["recipe"]["quantize"]["enabled"] is False
    assert report["stages"]["bench"]["recipe_changes"] == {"bench.runs": {"from": 2, "to": 3}}
    assert report["stages"]["quantize"]["recipe_changes"] == {"quantize.enabled": {"from": True, "to": False}}
    assert "runs: 3" in (run / "recipe.yaml").read_text()  # the recipe on disk is what ran
    again = cli("compress", "--resume", run, "--no-progress")  # and the next resume agrees with it
    assert again.exit_code == 0, again.output


def test_a_changed_stage_mid_training_starts_again_instead_of_failing(work, tmp_path, monkeypatch):
    """Stopped in teacher epoch 2; --resume --set teacher.lr=... restarts the teacher from epoch 1
    (its checkpoint was written for the old lr) instead of refusing the checkpoint."""
    from edgekd.train.loop import cross_entropy_step

    out = tmp_path / "run"
    calls = {"n": 0}

    def interrupted_in_epoch_2(model):
        step = cross_entropy_step(model)

        def wrapped(images, labels, index):
            calls["n"] += 1
            if calls["n"] == 5:  # 108 train images in batches of 32: the first step of epoch 2
                raise KeyboardInterrupt
            return step(images, labels, index)

        return wrapped

    with monkeypatch.context() as mp:
        mp.setattr("edgekd.train.loop.cross_entropy_step", interrupted_in_epoch_2)
        result = cli("compress", work / "tiny.yaml", "--set", "teacher.epochs=2", "--out", out, "--no-progress")
    assert result.exit_code == 130 and (out / "state/teacher.ckpt").is_file()
    result = cli("compress", "--resume", out, "--set", "teacher.lr=0.002", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "[teacher] its settings changed: the stage starts again from its first epoch" in result.output
    assert "resuming after epoch" not in result.output
    report = json.loads((out / "report.json").read_text())
    assert [e["epoch"] for e in report["stages"]["teacher"]["epochs"]] == [1, 2]
    assert report["stages"]["teacher"]["recipe_changes"] == {"teacher.lr": {"from": 0.003, "to": 0.002}}
