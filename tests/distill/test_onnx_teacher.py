"""Distillation from a teacher that exists only as ONNX (edgekd.distill.onnx_teacher)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edgekd.train.plumbing import RunOptions, TrainData

INPUT_SHAPE = (1, 8, 8)  # the tiny fixtures' images (tests/conftest.py)


def _data(n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *INPUT_SHAPE, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()


def test_student_from_onnx_teacher_matches_student_from_the_same_pytorch_teacher(tiny_onnx, make_tiny_cnn):
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.offline import distill
    from edgekd.distill.onnx_teacher import OnnxTeacher

    path, torch_teacher = tiny_onnx
    onnx_teacher = OnnxTeacher(path, data_mean=(0.5,), data_std=(0.25,))
    onnx_teacher.check_input(INPUT_SHAPE)
    x, y = _data()
    with torch.no_grad():
        assert torch.allclose(onnx_teacher(x), torch_teacher.eval()(x), atol=1e-5)
    cfg = dataclasses.replace(DistillConfig(), epochs=2, batch_size=32, augment=False)
    students, caches = [], []
    for teacher in (torch_teacher, onnx_teacher):
        student, cache = make_tiny_cnn(seed=3), {}
        distill(student, teacher, TrainData.of(x, y, x[:32], y[:32]), cfg, RunOptions(seed=0, progress=False),
                teacher_cache=cache)
        students.append(student)
        caches.append(cache[("logits", 0)])
    assert torch.allclose(caches[0], caches[1], atol=1e-5)  # the cached logits agree
    # the same cached logits: distilling again from the ONNX teacher's cache gives the same student
    again = make_tiny_cnn(seed=3)
    distill(again, torch_teacher, TrainData.of(x, y, x[:32], y[:32]), cfg, RunOptions(seed=0, progress=False),
            teacher_cache={("logits", 0): caches[1]})
    for a, b in zip(again.state_dict().values(), students[1].state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(students[0].state_dict().values(), students[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3)


def test_onnx_teacher_per_augmented_batch_and_refusals(tiny_onnx, make_tiny_cnn):
    from edgekd.distill.config import DistillConfig
    from edgekd.distill.offline import distill
    from edgekd.distill.onnx_teacher import OnnxTeacher, check_usable
    from edgekd.errors import ConfigError

    path, _ = tiny_onnx
    teacher = OnnxTeacher(path, data_mean=(0.5,), data_std=(0.25,))
    x, y = _data()
    cfg = dataclasses.replace(DistillConfig(), epochs=1, batch_size=32, augment=True)  # teacher runs per batch
    result = distill(make_tiny_cnn(seed=3), teacher, TrainData.of(x, y, x[:32], y[:32]), cfg,
                     RunOptions(seed=0, progress=False))
    assert len(result.epochs) == 1 and result.epochs[0]["loss"] == result.epochs[0]["loss"]  # finite, not NaN
    with pytest.raises(ConfigError, match="input"):
        teacher.check_input((3, 8, 8))
    with pytest.raises(ConfigError, match="teacher's layers"):
        check_usable([{"kind": "fitnet"}])


def test_onnx_teacher_converts_to_its_own_normalization(tiny_onnx):
    """Data normalized with another mean/std reaches the model as its metadata says."""
    import onnx

    from edgekd.distill.onnx_teacher import OnnxTeacher

    path, model = tiny_onnx
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"edgekd.mean": "[0.5]", "edgekd.std": "[0.25]"})
    tagged = path.parent / "tagged.onnx"
    onnx.save(proto, str(tagged))
    teacher = OnnxTeacher(tagged, data_mean=(0.0,), data_std=(1.0,))  # the data: raw pixels in [0, 1]
    raw = torch.rand(4, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(teacher(raw), model.eval()((raw - 0.5) / 0.25), atol=1e-5)
