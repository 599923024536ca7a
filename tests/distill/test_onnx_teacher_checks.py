"""An ONNX teacher (teacher.onnx) meets the data: its class names (same set: mapped to the
data's order; another set: refused), finite logits, a fixed batch dimension (fed in chunks),
all checked on a real batch before the run directory exists; and `edgekd export --stage`
of a model the run does not hold in PyTorch form is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgekd.cli import main

TINY = {"data": {"limit_train": 400, "limit_test": 200, "calib_size": 64},
        "distill": {"epochs": 1, "arch_args": {"width": 4}}, "bench": {"runs": 2, "min_seconds": 0, "warmup": 0},
        "quantize": {"max_drop": None}, "export": {"check_batch_sizes": [2]}}


def _spec():
    from edgekd.data.config import DataConfig
    from edgekd.data.splits import load_splits

    return load_splits(DataConfig(**TINY["data"]), seed=0)


def _variant(source, target, *, names="keep", batch=None, scale=None, reverse=False):
    """A copy of `source` with other class names (None: none), a fixed batch dimension, its
    logits multiplied by `scale` (nan, inf), or in reverse order (`reverse`: a teacher trained
    with its classes numbered the other way round)."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(source))
    if names != "keep":
        kept = [p for p in proto.metadata_props if p.key != "edgekd.class_names"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        if names is not None:
            proto.metadata_props.add(key="edgekd.class_names", value=json.dumps(list(names)))
    if batch is not None:
        for value in (*proto.graph.input, *proto.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_param")
            dim.dim_value = batch
    if scale is not None or reverse:
        out = proto.graph.output[0].name
        for node in proto.graph.node:
            node.output[:] = [o + "_raw" if o == out else o for o in node.output]
        if reverse:
            proto.graph.initializer.append(numpy_helper.from_array(np.arange(9, -1, -1, dtype=np.int64), "order"))
            proto.graph.node.append(helper.make_node("Gather", [out + "_raw", "order"], [out], axis=1))
        else:
            proto.graph.initializer.append(numpy_helper.from_array(np.array([scale], np.float32), "scale"))
            proto.graph.node.append(helper.make_node("Mul", [out + "_raw", "scale"], [out]))
    onnx.save(proto, str(target))
    return target


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tinycnn teacher exported by edgekd for the Fashion-MNIST subset, and its variants."""
    from edgekd.models.zoo import build_model
    from edgekd.onnx_export import ExportConfig, model_metadata, to_onnx

    folder = tmp_path_factory.mktemp("teachers")
    spec = _spec().spec
    made = {}
    for classes in (10, 12):
        torch.manual_seed(0)
        model = build_model("tinycnn", in_channels=1, num_classes=classes, width=4).eval()
        made[classes] = folder / f"teacher{classes}.onnx"
        to_onnx(model, made[classes], input_shape=(1, 28, 28), cfg=ExportConfig(),
                metadata=model_metadata(stage="teacher", arch="tinycnn", spec=spec, params=1, macs=1))
    good = made[10]
    names = list(spec.class_names)
    return {
        "good": good, "names": names,
        "permuted": _variant(good, folder / "permuted.onnx", names=names[::-1], reverse=True),
        "other_set": _variant(good, folder / "other_set.onnx", names=[f"part-{i}" for i in range(10)]),
        "unnamed": _variant(good, folder / "unnamed.onnx", names=None),
        "unnamed12": _variant(made[12], folder / "unnamed12.onnx", names=None),
        "nan": _variant(good, folder / "nan.onnx", scale=float("nan")),
        "inf": _variant(good, folder / "inf.onnx", scale=float("inf")),
        "batch1": _variant(good, folder / "batch1.onnx", batch=1),
        "batch3": _variant(good, folder / "batch3.onnx", batch=3),
    }


def _compress(tmp_path, teacher, out, *extra):
    recipe = tmp_path / "recipe.json"  # JSON is YAML
    recipe.write_text(json.dumps({**TINY, "teacher": {"onnx": str(teacher)}}))
    return CliRunner().invoke(main, ["compress", str(recipe), "--out", str(out), "--no-progress", *extra])


def _refused(result, *expected):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekd: error: "), result.output
    for text in expected:
        assert text in lines[0], result.output
    return lines[0]


def _val_top1(teacher_path):
    """The top-1 on the run's val split of edgekd's own teacher, in the data's class order."""
    from edgekd.distill.onnx_teacher import OnnxTeacher
    from edgekd.train.evaluate import accuracy
    from edgekd.train.tensors import to_tensor

    splits = _spec()
    spec = splits.spec
    teacher = OnnxTeacher(teacher_path, data_mean=spec.mean, data_std=spec.std)
    return accuracy(teacher, to_tensor(splits.val_x, spec.mean, spec.std), torch.from_numpy(splits.val_y))


# 1. class names -------------------------------------------------------------------------------

def test_teacher_classes_in_another_order_are_mapped_to_the_data_order(teachers):
    from edgekd.distill.onnx_teacher import open_teacher

    spec = _spec().spec
    x = torch.randn(5, 1, 28, 28)
    good, permuted = open_teacher(teachers["good"], spec), open_teacher(teachers["permuted"], spec)
    assert good.order is None and good.class_note is None
    assert torch.equal(permuted(x), good(x))  # column j is the data's class j
    assert "reordered" in permuted.class_note and "Ankle boot, Bag" in permuted.class_note


@pytest.mark.parametrize("teacher, data, order, note", [
    (("cat", "dog", "T-shirt/top"), ("T-shirt_top", "cat", "dog"), [2, 0, 1], "reordered"),  # image folder names
    (("cat", "dog"), ("cat", "dog"), None, None),
    (("cat", "dog"), ("0", "1"), None, "unchecked: the data names no classes"),  # an .npz without class_names
    (None, ("cat", "dog"), None, "names no classes"),
])
def test_class_order(teacher, data, order, note):
    from edgekd.distill.onnx_teacher import class_order

    got_order, got_note = class_order(teacher, data, "t.onnx")
    assert got_order == order and (note in got_note if note else got_note is None)


@pytest.mark.parametrize("teacher, data", [(("cat", "dog"), ("cat", "cow")), (("cat", "dog", "cow"), ("cat", "dog")),
                                           (("0", "1", "2"), ("cat", "dog"))])
def test_class_order_refuses_another_set_naming_both(teacher, data):
    from edgekd.distill.onnx_teacher import class_order
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match=f"teacher classes: {', '.join(teacher)}; data classes: {', '.join(data)}"):
        class_order(teacher, data, "t.onnx")


def test_compress_with_a_permuted_teacher_says_so_and_learns_the_right_targets(tmp_path, teachers):
    out = tmp_path / "run"
    result = _compress(tmp_path, teachers["permuted"], out)
    assert result.exit_code == 0, result.output
    assert "logits are reordered from its class order" in result.output
    record = json.loads((out / "report.json").read_text())["stages"]["teacher"]
    assert "reordered" in record["classes"] and record["teacher_class_order"] == teachers["names"][::-1]
    assert record["val_top1"] == pytest.approx(_val_top1(teachers["good"]), abs=1e-9)


def test_teacher_of_other_classes_is_refused_before_the_run_naming_both_lists(tmp_path, teachers):
    out = tmp_path / "run"
    _refused(_compress(tmp_path, teachers["other_set"], out), "other classes than the data's",
             "teacher classes: part-0, part-1", "data classes: T-shirt/top, Trouser")
    assert not out.exists()


def test_teacher_without_class_names_must_give_the_data_class_count(tmp_path, teachers):
    from edgekd.distill.onnx_teacher import open_teacher

    spec = _spec().spec
    unnamed = open_teacher(teachers["unnamed"], spec)
    assert unnamed.order is None and "names no classes" in unnamed.class_note
    out = tmp_path / "run"
    _refused(_compress(tmp_path, teachers["unnamed12"], out), "gives 12 logits per image, the data has 10 classes")
    assert not out.exists()


# 2. non-finite logits ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["nan", "inf"])
def test_teacher_with_non_finite_logits_is_refused_before_the_run(tmp_path, teachers, case):
    out = tmp_path / "run"
    line = _refused(_compress(tmp_path, teachers[case], out), "non-finite logits (NaN or inf) on a real batch of the data")
    assert "lr" not in line
    assert not out.exists()


# 3. a fixed batch dimension ----------------------------------------------------------------------

@pytest.mark.parametrize("case, images", [("batch1", 2), ("batch3", 7), ("batch3", 3), ("batch3", 1)])
def test_fixed_batch_teacher_is_fed_in_chunks(teachers, case, images):
    from edgekd.distill.onnx_teacher import open_teacher

    spec = _spec().spec
    x = torch.randn(images, 1, 28, 28)
    fixed = open_teacher(teachers[case], spec)
    assert fixed.fixed_batch == int(case[-1])
    assert torch.allclose(fixed(x), open_teacher(teachers["good"], spec)(x), atol=1e-5)


@pytest.fixture(scope="module")
def batch1_run(tmp_path_factory, teachers):
    """A whole run distilled from the fixed-batch-1 teacher."""
    folder = tmp_path_factory.mktemp("batch1")
    result = _compress(folder, teachers["batch1"], folder / "run")
    return folder / "run", result


def test_fixed_batch_teacher_works_end_to_end(batch1_run, teachers):
    run, result = batch1_run
    assert result.exit_code == 0, result.output
    record = json.loads((run / "report.json").read_text())["stages"]["teacher"]
    assert record["fixed_batch"] == 1
    assert record["val_top1"] == pytest.approx(_val_top1(teachers["good"]), abs=1e-9)
    assert (run / "teacher.fp32.onnx").is_file() and (run / "student.safetensors").is_file()


def test_teacher_whose_graph_fails_on_a_batch_of_the_data_is_refused_before_the_run(tmp_path, teachers):
    """The batch is symbolic in the input, yet the graph reshapes to a batch of 1 inside."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(teachers["good"]))
    graph, name = proto.graph, proto.graph.input[0].name
    for node in graph.node:
        node.input[:] = [i + "_one" if i == name else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 28, 28], np.int64), "one_shape"))
    graph.node.insert(0, helper.make_node("Reshape", [name, "one_shape"], [name + "_one"]))
    path = tmp_path / "inner_batch1.onnx"
    onnx.save(proto, str(path))
    out = tmp_path / "run"
    _refused(_compress(tmp_path, path, out), f"teacher.onnx '{path}' fails on a batch of 2 of the data's 1x28x28 images")
    assert not out.exists()


# 4. export --stage of a model the run does not hold in PyTorch form ------------------------------

def test_export_teacher_of_an_onnx_teacher_run_is_refused_in_one_line(batch1_run):
    run, result = batch1_run
    assert result.exit_code == 0, result.output
    for flags in ([], ["--int8"]):
        line = _refused(CliRunner().invoke(main, ["export", "--onnx", str(run), "--stage", "teacher", *flags]),
                        "is an ONNX model already (teacher.onnx)")
        assert str(run.resolve() / "teacher.fp32.onnx") in line
    assert not (run / "export").exists()


def test_export_of_a_stage_that_has_not_run_is_refused_in_one_line(tmp_path, teachers, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgekd.pipeline.stages.distill.run", stop)  # Ctrl-C: the teacher is recorded, distill not
    out = tmp_path / "run"
    result = _compress(tmp_path, teachers["good"], out)
    assert result.exit_code == 130, result.output
    _refused(CliRunner().invoke(main, ["export", "--onnx", str(out)]),
             "has no student to export yet: its distill stage has not completed", "--resume")
