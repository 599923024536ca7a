"""`edgekd compress` end to end with each distillation scheme and with transfer learning,
on a tiny recipe (a few hundred embedded images, one epoch, a short bench)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main

TINY = {
    "name": "tiny-scheme",
    "seed": 1,
    "data": {"name": "fashion-mnist-subset", "limit_train": 300, "limit_test": 60, "calib_size": 16},
    "teacher": {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 32, "lr": 0.01,
                "augment": False},
    "distill": {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 32, "lr": 0.01,
                "augment": False},
    "quantize": {"max_drop": None},
    "bench": {"warmup": 1, "runs": 3, "min_seconds": 0.0},
}


def compress(tmp_path, markdown_section: str, **sections) -> dict:
    recipe = {**TINY, **{k: {**TINY.get(k, {}), **v} for k, v in sections.items()}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    # per-epoch state of every training is removed once its stage is done
    assert not list((out / "state").glob("*.ckpt"))
    report = json.loads((out / "report.json").read_text())
    assert [m["stage"] for m in report["models"]] == ["teacher", "student", "int8"]
    assert all(m["top1"] is not None for m in report["models"])
    assert f"## {markdown_section}" in (out / "report.md").read_text()
    return report


def test_online_mutual_learning(tmp_path):
    report = compress(tmp_path, "Distillation scheme: online", distill={"scheme": "online", "peers": 3})
    stage = report["stages"]["distill"]
    assert stage["scheme"] == "online" and len(stage["peers_val_top1"]) == 3
    best = stage["best_peer"]
    assert stage["peers_val_top1"][best] == max(stage["peers_val_top1"])
    assert stage["val_top1"] == pytest.approx(stage["peers_val_top1"][best], abs=1e-3)


def test_born_again(tmp_path):
    stage = compress(tmp_path, "Distillation scheme: born-again",
                     distill={"scheme": "born-again", "generations": 2})["stages"]["distill"]
    tops = [g["val_top1"] for g in stage["generations"]]
    assert [g["generation"] for g in stage["generations"]] == [1, 2]
    assert tops[stage["best_generation"] - 1] == max(tops)
    assert stage["val_top1"] == pytest.approx(max(tops), abs=1e-3)


def test_ema_self_distillation(tmp_path):
    report = compress(tmp_path, "Distillation scheme: EMA", distill={"scheme": "ema", "ema_decay": 0.99})
    stage = report["stages"]["distill"]
    assert stage["scheme"] == "ema" and stage["continues"] in ("student", "ema")
    assert stage["ema_updates"] > 0
    assert stage["val_top1"] == pytest.approx(max(stage["student_val_top1"], stage["ema_val_top1"]), abs=1e-3)


def test_transfer_learning_teacher(tmp_path):
    import torch

    from edgekd.io.artifacts import save_weights
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained-5-classes.safetensors"
    save_weights(build_model("tinycnn", in_channels=1, num_classes=5, width=4), pretrained)
    report = compress(tmp_path, "Transfer learning (teacher)",
                      teacher={"transfer": {"pretrained": str(pretrained), "head_epochs": 1}})
    teacher = report["stages"]["teacher"]
    assert teacher["transfer"]["head"] == "fc" and teacher["transfer"]["pretrained_head_shape"] == [5, 16]
    assert {"val_top1_head", "val_top1_finetune"} <= set(teacher)
    assert teacher["finetune_lr"] == pytest.approx(0.001)
    assert len(teacher["epochs"]) == 1  # the fine-tuning phase's history


def test_transfer_with_a_missing_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**TINY, "teacher": {**TINY["teacher"], "transfer": {"pretrained": "nope.pt"}}}))
    result = CliRunner().invoke(main, ["compress", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "teacher.transfer.pretrained 'nope.pt' does not exist" in result.output
    assert not (tmp_path / "run").exists()
