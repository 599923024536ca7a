"""Checks before the run directory exists and before any training: every input error that
can be found cheaply is found here, as one line with exit code 2, instead of after the
expensive stages.

- the recipe's numbers are finite (an inf/NaN lr or temperature never reaches training);
- the data: every image file was decoded once when listed (edgekd.data.image_files: bad ones are
  refused or, with data.skip_bad, skipped), its train split is not constant, and its
  normalized images are finite;
- the teacher, the student and the extra teachers build, and a batch at the data's size
  passes through each, giving one logit per class;
- every weights file (teacher.weights, teacher.transfer.pretrained, extra teachers) is
  readable, fits its architecture and holds finite values;
- export.opset is one the installed exporter and ONNX Runtime support;
- pruning works on this student: a dry run on a copy of the untrained student;
- the values that later stages read (val size for the int8 budget, semi-supervised data,
  quantize exclusions and calibration, bench's session options): preflight_values.py.

Stages already completed (`done`, on --resume) are not checked again: their inputs were
checked when they ran, and may be gone since.

`advice(recipe)`: settings that run but that measurements advise against (a rep_ac student
quantized after training), logged as warnings when the run starts; not errors.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from pathlib import Path

import numpy as np

from edgekd.configtools import check_float32
from edgekd.errors import ConfigError, DataError, EdgekdError, ModelFileError, first_line
from edgekd.models.family_blocks import FAMILY, PTQ_SENSITIVE_BLOCKS
from edgekd.pipeline.context import build_arch, input_shape_of
from edgekd.pipeline.preflight_values import check_values
from edgekd.recipe import Recipe

BATCH = 2  # images per forward check: batch norm trains on two


def preflight(recipe: Recipe, store, done=()) -> None:
    """Raise the first input error of `recipe` (a BadInput, exit 2); write nothing."""
    import torch

    from edgekd.pipeline.stages import distill
    from edgekd.search import stage as search_stage

    check_finite_numbers(recipe.to_dict())
    splits = store.splits()
    spec = splits.spec
    check_batch_sizes(recipe, len(splits.train_y), (spec.channels, spec.height, spec.width))
    with torch.random.fork_rng(devices=[]):  # building models draws initial weights: leave the RNG alone
        images, labels = check_data(splits)
        teacher = None if recipe.teacher.onnx is not None else \
            check_model("teacher", recipe.teacher.arch, recipe.teacher.arch_args, spec, images)
        student = check_model("distill", *search_stage.preflight_student(recipe.distill, done), spec, images)
        if "teacher" not in done:
            check_teacher(recipe, teacher, spec, images)
            for i, extra in enumerate(_extra_teachers(recipe), start=1):
                what = f"distill.extra_teachers[{i - 1}]"
                model = check_model(what, extra.arch, extra.arch_args, spec, images)
                if extra.weights is not None:
                    check_weights(f"{what}.weights", extra.weights, model, spec, transfer_hint=False)
        if "distill" not in done:
            distill.check(recipe.distill, spec=spec, teacher_arch=recipe.teacher.arch,
                          teacher_arch_args=recipe.teacher.arch_args)
            search_stage.check(recipe.distill, spec=spec, opset=recipe.export.opset)  # distill.search.latency_table
            from edgekd.distill.offline import caches_logits  # the logit cache fits, before the teacher trains

            caches_logits(recipe.distill, len(splits.train_y), spec.num_classes * (1 + len(_extra_teachers(recipe))))
        qat = recipe.quantize.enabled and recipe.quantize.method == "qat"
        if "export" not in done or (qat and "quantize" not in done):
            check_opset(recipe.export.opset)
        if recipe.prune.enabled and "prune" not in done:
            student = check_pruning(recipe, student, spec, images, labels)  # as the export stage will get it
        check_values(recipe, store, student, done)


def advice(recipe: Recipe) -> list[str]:
    """Settings that run but that measurements advise against: warnings logged when the run
    starts, before any training (not errors: the run goes on)."""
    from edgekd.search.config import AUTO

    notes = []
    d, q = recipe.distill, recipe.quantize
    if q.enabled and q.method == "ptq":
        named = d.arch == FAMILY and (d.arch_args or {}).get("block") in PTQ_SENSITIVE_BLOCKS
        searched = [b for b in d.search.blocks if b in PTQ_SENSITIVE_BLOCKS] if d.arch == AUTO else []
        if named or searched:
            which = (f"the student's block {d.arch_args['block']}" if named else
                     f"distill.search.blocks names {', '.join(searched)}, and a student the search chooses from them")
            notes.append(f"{which} fuses its branches into kernels that post-training int8 quantizes badly (a "
                         "rep_ac student lost up to 6 val points on Fashion-MNIST); set quantize.method: qat")
    return notes


def check_batch_sizes(recipe: Recipe, images: int, image_shape) -> None:
    """Every batch a stage will hold fits in memory (edgekd.data.base.check_batch_memory)."""
    from edgekd.data.base import check_batch_memory

    sizes = {"teacher.batch_size": recipe.teacher.batch_size, "distill.batch_size": recipe.distill.batch_size,
             "quantize.calib_batch_size": recipe.quantize.calib_batch_size}
    if recipe.prune.enabled:
        sizes["prune.batch_size"] = recipe.prune.batch_size
    if recipe.quantize.enabled and recipe.quantize.method == "qat":
        sizes["quantize.qat.batch_size"] = recipe.quantize.qat.batch_size
    for key, size in sizes.items():
        check_batch_memory(size, images, image_shape, key)


def check_finite_numbers(values, where: str = "") -> None:
    """Every number of the recipe is finite and fits float32 (configtools.check_float32): an
    inf or NaN lr, temperature, tolerance or duration, or a 1e-50 that float32 makes 0, is
    refused here (the config dataclasses check the ranges)."""
    if isinstance(values, dict):
        for key, value in values.items():
            check_finite_numbers(value, f"{where}.{key}" if where else str(key))
    elif isinstance(values, (list, tuple)):
        for i, value in enumerate(values):
            check_finite_numbers(value, f"{where}[{i}]")
    elif isinstance(values, float) and not math.isfinite(values):
        raise ConfigError(f"{where} must be a finite number, got {values}")
    elif isinstance(values, float):  # arch_args, terms, stated preprocessing: not only the typed fields
        check_float32(values, where)


def check_data(splits):
    """The train split can be learnt from; returns a first batch (normalized images, labels).
    Streamed image files were each decoded once when listed (bad ones refused or skipped);
    their pixel checks look at the calibration sample, random train images."""
    import torch

    from edgekd.train.tensors import to_tensor

    x = splits.train_x if splits.train_x is not None else splits.calib_x
    y = splits.train_y if splits.train_x is not None else splits.calib_y
    if len(splits.train_y) < BATCH or len(x) < BATCH:
        raise DataError(f"{splits.spec.source}: the train split has {len(splits.train_y)} image(s) after the "
                        f"validation split; training needs at least {BATCH}")
    flat = x.reshape(len(x), -1)
    if int(flat.min()) == int(flat.max()):
        raise DataError(f"{splits.spec.source}: every train image is the same constant value {int(flat.min())} "
                        "(zero pixel variance): there is nothing to learn; check the dataset")
    if bool(np.all(flat.min(axis=1) == flat.max(axis=1))):
        raise DataError(f"{splits.spec.source}: every train image is a single flat value (no pixel varies within "
                        "an image): there is nothing to learn from the pictures; check the dataset")
    images = to_tensor(x[:BATCH], splits.spec.mean, splits.spec.std)
    if not bool(torch.isfinite(images).all()):
        constant = [c for c, s in enumerate(splits.spec.std) if not s > 0]
        why = f"channel(s) {constant} have zero variance in the train split" if constant else \
            f"the normalization (mean {list(splits.spec.mean)}, std {list(splits.spec.std)}) is not usable"
        raise DataError(f"{splits.spec.source}: the normalized train images contain NaN or inf: {why}; "
                        "check the dataset")
    # an unlabeled image (-1) counts as class 0 here: the dry runs need some class, not the right one
    labels = torch.from_numpy(np.maximum(y[:BATCH], 0).astype(np.int64))
    return images, labels


def check_model(what: str, arch: str, arch_args: dict, spec, images):
    """Build `arch` for the data and pass `images` through it in eval and train mode."""
    import torch

    size = "x".join(str(d) for d in input_shape_of(spec))
    try:
        model = build_arch(spec, arch, arch_args)
    except EdgekdError:
        raise
    except Exception as exc:  # a factory's own error: any type
        raise ConfigError(f"{what}.arch '{arch}' cannot be built with arch_args {arch_args} for {size} inputs and "
                          f"{spec.num_classes} classes: {type(exc).__name__}: {first_line(exc)}") from exc
    for mode in ("eval", "train"):
        try:
            with torch.no_grad():
                out = model.train(mode == "train")(images)
        except EdgekdError:
            raise
        except Exception as exc:  # RuntimeError for too small inputs, MemoryError, a plugin's own errors
            raise ConfigError(f"{what}.arch '{arch}' cannot run on the data's {size} images (batch of {len(images)}, "
                              f"{mode} mode): {type(exc).__name__}: {first_line(exc)}") from exc
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(images), spec.num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{what}.arch '{arch}' gives {got} for a batch of {len(images)} {size} images; "
                              f"expected logits of shape ({len(images)}, {spec.num_classes})")
    return model.eval()


def check_onnx_teacher(recipe: Recipe, spec, images) -> None:
    """teacher.onnx: a safe ONNX file taking the data's input, giving finite logits for the
    data's classes on a real batch (as every batch of the run is checked), and a distillation
    that needs only its logits."""
    from edgekd.distill.onnx_teacher import check_on_batch, check_usable
    from edgekd.distill.scheme_registry import spoken_list, teacher_schemes
    from edgekd.pipeline.stages.distill import learns_from_teacher

    cfg = recipe.teacher
    _check_file("teacher.onnx", cfg.onnx)
    check_on_batch(cfg.onnx, spec, images)
    if not learns_from_teacher(recipe.distill):
        raise ConfigError(f"teacher.onnx is used by the {spoken_list(teacher_schemes())} schemes, not "
                          f"'{recipe.distill.scheme}'")
    check_usable(recipe.distill.terms)


def check_teacher(recipe: Recipe, teacher, spec, images) -> None:
    cfg = recipe.teacher
    if cfg.onnx is not None:
        check_onnx_teacher(recipe, spec, images)
        return
    if cfg.weights is not None:
        check_weights("teacher.weights", cfg.weights, teacher, spec, transfer_hint=True)
    transfer = cfg.transfer
    if transfer is not None:
        if cfg.weights is not None:
            raise ConfigError("set teacher.weights or teacher.transfer.pretrained, not both")
        if transfer.head_epochs == 0 and cfg.epochs == 0:
            raise ConfigError("teacher.transfer.head_epochs and teacher.epochs are both 0: nothing trains the new head")
        from edgekd.train.transfer import load_backbone

        _check_file("teacher.transfer.pretrained", transfer.pretrained)
        try:
            load_backbone(copy.deepcopy(teacher), transfer.pretrained)
        except OSError as exc:
            raise ModelFileError(f"teacher.transfer.pretrained '{transfer.pretrained}' cannot be read: "
                                 f"{exc.strerror or exc}") from exc
        except ModelFileError as exc:  # say which recipe key named the file
            raise ModelFileError(f"teacher.transfer.pretrained: {exc}") from exc
    if cfg.weights is None and transfer is None and cfg.epochs == 0:
        raise ConfigError("teacher.epochs is 0 and teacher.weights is not set: train the teacher or give its weights")


def check_weights(what: str, path: str, model, spec, *, transfer_hint: bool) -> None:
    """`path` is readable, fits `model` (names and shapes) and holds finite numbers."""
    import torch

    from edgekd.io.artifacts import load_state_dict, state_dict_mismatches

    _check_file(what, path)
    try:
        state = load_state_dict(path)
    except OSError as exc:
        raise ModelFileError(f"{what} '{path}' cannot be read: {exc.strerror or exc}") from exc
    except ModelFileError as exc:  # say which recipe key named the file
        raise ModelFileError(f"{what}: {exc}") from exc
    own = model.state_dict()
    problems = state_dict_mismatches(state, own)
    if problems:
        raise ModelFileError(f"{what} '{path}' do not fit the architecture: {'; '.join(problems)}"
                             f"{_mismatch_hint(state, own, model, spec, transfer_hint)}")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{what} '{path}' hold non-finite values (NaN or inf) in '{key}'; "
                                 "these weights are unusable")


def _mismatch_hint(state: dict, own: dict, model, spec, transfer_hint: bool) -> str:
    """For weights of the same architecture made for other channels or classes: use transfer."""
    from torch import nn

    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    same_layers = set(state) == set(own)
    if not wrong or not same_layers:
        return " (check the arch and arch_args they were saved with)"
    first_conv = next((f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    try:
        from edgekd.train.transfer import find_head

        head = find_head(model)
    except EdgekdError:
        head = None
    edges = all(k == first_conv or (head and k.startswith(head + ".")) for k in wrong)
    if not edges:
        return " (check the arch and arch_args they were saved with)"
    if transfer_hint:
        return (f"; they were made for other input channels or classes (the data has {spec.channels} channel(s), "
                f"{spec.num_classes} classes): use teacher.transfer: {{pretrained: PATH}} instead of teacher.weights")
    return (f"; they were made for other input channels or classes (the data has {spec.channels} channel(s), "
            f"{spec.num_classes} classes): fine-tune them as the teacher with teacher.transfer")


def _check_file(what: str, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{what} '{path}' does not exist" if not p.exists() else
                             f"{what} '{path}' is not a regular file")
    if not os.access(p, os.R_OK):
        raise ModelFileError(f"{what} '{path}' cannot be read: permission denied")


def check_opset(opset: int) -> None:
    """export.opset is within what the installed torch exporter and ONNX Runtime support."""
    import torch

    top = max_torch_opset()
    if top is not None and opset > top:
        raise ConfigError(f"export.opset {opset} is not supported by the installed torch {torch.__version__}, whose "
                          f"ONNX exporter goes up to opset {top}; set export.opset between 13 and {top}")
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return
    if opset > onnx.defs.onnx_opset_version():
        raise ConfigError(f"export.opset {opset} is newer than the installed onnx {onnx.__version__} knows "
                          f"(up to {onnx.defs.onnx_opset_version()}); lower export.opset")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "opset",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    from edgekd.runtime.session import cpu_session

    try:
        cpu_session(model.SerializeToString(), log_severity=4)
    except Exception as exc:  # onnxruntime's own error types
        raise ConfigError(f"export.opset {opset} is not supported by the installed onnxruntime {ort.__version__}: "
                          f"{first_line(exc)[:120]}; lower export.opset") from exc


def max_torch_opset() -> int | None:
    """The newest opset torch.onnx exports, from its constants, else by exporting a tiny model."""
    import torch.onnx

    constants = getattr(torch.onnx, "_constants", None)
    for name in ("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", "ONNX_MAX_OPSET"):  # edgekd exports with dynamo=False
        top = getattr(constants, name, None)
        if isinstance(top, int):
            return top
    for opset in range(30, 12, -1):  # no constants in this torch version: ask the exporter itself
        if exports_at(opset):
            return opset
    return None


def exports_at(opset: int) -> bool:
    import io
    import warnings

    import torch

    with _quiet_fds(), warnings.catch_warnings():  # the exporter prints its IR on failure
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(torch.nn.ReLU(), (torch.zeros(1),), io.BytesIO(), opset_version=opset, dynamo=False)
            return True
        except Exception:  # noqa: BLE001 - any failure means 'not this opset'
            return False


@contextlib.contextmanager
def _quiet_fds():
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def check_pruning(recipe: Recipe, student, spec, images, labels):
    """A dry run of the prune stage's channel removal on a copy of the untrained student, and a
    forward pass through the result: a graph torch-pruning cannot handle fails here. Returns
    the pruned copy."""
    import torch

    from edgekd.prune.channels import PrunePlan, prune_channels

    cfg = recipe.prune
    trial = copy.deepcopy(student)
    try:
        prune_channels(trial, PrunePlan.of(cfg, steps=1 if cfg.latency_targeted else cfg.steps),
                       input_shape=input_shape_of(spec), loss_batch=(images, labels))
        with torch.no_grad():
            trial.eval()(images)
    except EdgekdError as exc:
        raise ConfigError(f"prune (tried on the untrained {recipe.distill.arch} before training): {exc}") from exc
    except Exception as exc:  # torch-pruning's plain errors
        raise ConfigError(f"prune cannot remove channels from {recipe.distill.arch} (tried before training): "
                          f"{type(exc).__name__}: {first_line(exc)}; set prune.protect or prune.enabled: false") from exc
    return trial


def _extra_teachers(recipe: Recipe) -> list:
    from edgekd.distill.config import extra_teacher_configs
    from edgekd.pipeline.stages.distill import learns_from_teacher

    return extra_teacher_configs(recipe.distill) if learns_from_teacher(recipe.distill) else []
