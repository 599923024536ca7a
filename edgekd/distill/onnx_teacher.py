"""A teacher that exists only as ONNX (a vendor's model, or one exported long ago): its
logits come from ONNX Runtime, so it serves offline response KD (Hinton's loss, cached
logits or one run per augmented batch). It has no layers to hook and no gradients, so
feature and relation terms (distill.terms) cannot use it: `check_usable` says so.

It is an nn.Module only so that the distillation code can treat it like any teacher.
Inputs arrive normalized with the data's mean/std; when the model's edgekd metadata names
another normalization, they are converted to it first (raw pixel = x * std + mean).

What is checked where data meets this model (every batch goes through the same checks, and
preflight runs them on a real batch of the data before the run directory exists):
- classes: the model's `edgekd.class_names` and the data's are the same set; in another
  order, its logits are reordered to the data's (`class_note` says so); another set is
  refused with both lists. Without names on a side, the logit count must be the data's;
- a fixed batch dimension (a common vendor export: batch 1) is fed in chunks of that size,
  the last one padded and trimmed;
- logits are finite and shaped (images, classes); ONNX Runtime's failures are one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.errors import ConfigError, EdgekdError, ModelFileError, first_line
from edgekd.runtime.metadata import CLASS_NAMES, MEAN, STD, meta_json


class OnnxTeacher(nn.Module):
    """Logits of an ONNX classifier through ONNX Runtime, as a frozen torch module.
    data_class_names: the data's classes, in its label order (the logits come out in it)."""

    def __init__(self, path: str | Path, *, data_mean, data_std, data_class_names=None, provider: str = "cpu"):
        super().__init__()
        from edgekd.runtime.config import BenchConfig
        from edgekd.runtime.datamatch import model_class_names
        from edgekd.runtime.session import make_session

        self.path = self.onnx_path = str(path)
        self.session = make_session(path, BenchConfig(provider=provider))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"teacher.onnx '{path}' has {len(inputs)} inputs; a classifier with one image "
                                 "input is needed")
        self.input = inputs[0]
        batch = self.input.shape[0] if self.input.shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None  # else symbolic: any size
        self.feed_dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32
        meta = self.session.get_modelmeta().custom_metadata_map
        mean, std = meta_json(meta, MEAN), meta_json(meta, STD)
        self.register_buffer("_scale", torch.ones(1))  # placeholder so .to()/.eval() behave like a module
        self.convert = None
        if mean is not None and std is not None and (list(mean), list(std)) != (list(data_mean), list(data_std)):
            # x_teacher = (x * data_std + data_mean - mean) / std, per channel
            shape = (1, -1, 1, 1)
            d_mean, d_std = (torch.tensor(v, dtype=torch.float32).view(shape) for v in (data_mean, data_std))
            t_mean, t_std = (torch.tensor(v, dtype=torch.float32).view(shape) for v in (mean, std))
            self.convert = (d_std / t_std, (d_mean - t_mean) / t_std)
        self.class_names = model_class_names(meta, path)
        self.num_classes = len(data_class_names) if data_class_names is not None else None
        self.order, self.class_note = (None, None) if data_class_names is None else \
            class_order(self.class_names, tuple(data_class_names), self.path)

    def check_input(self, input_shape: tuple) -> None:
        """The model must take the data's (C, H, W); a fixed batch size is fed in chunks."""
        dims = list(self.input.shape)
        fixed = [d if isinstance(d, int) else None for d in dims[1:]]
        if len(dims) != 4 or any(f is not None and f != s for f, s in zip(fixed, input_shape)):
            raise ConfigError(f"teacher.onnx '{self.path}' takes input {dims}, the data is "
                              f"{['N', *input_shape]}; export the teacher for this input size and channels")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if self.convert is not None:
            scale, shift = self.convert
            x = x * scale + shift
        logits = self._logits(np.ascontiguousarray(x.cpu().numpy(), dtype=self.feed_dtype))
        if self.order is not None:
            logits = logits[:, self.order]  # the teacher's class order -> the data's
        return torch.from_numpy(np.ascontiguousarray(logits)).to(x.device)

    def _logits(self, feed: np.ndarray) -> np.ndarray:
        """float32 (N, classes) for the N images of `feed`, checked: in chunks of a fixed batch."""
        size = self.fixed_batch
        if size is None or len(feed) == size:
            return self._checked(self._run(feed), len(feed))
        parts = []
        for start in range(0, len(feed), size):
            chunk = feed[start:start + size]
            padded = np.pad(chunk, [(0, size - len(chunk))] + [(0, 0)] * (chunk.ndim - 1), mode="edge")
            parts.append(self._checked(self._run(padded), size)[:len(chunk)])  # padding trimmed
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes or 0), np.float32)

    def _run(self, feed: np.ndarray):
        try:
            return self.session.run(None, {self.input.name: feed})[0]
        except EdgekdError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            raise ModelFileError(f"teacher.onnx '{self.path}' fails on a batch of {len(feed)} of the data's "
                                 f"{'x'.join(str(d) for d in feed.shape[1:])} images: {first_line(exc)}") from exc

    def _checked(self, logits, images: int) -> np.ndarray:
        """One row of finite logits per image, one logit per class of the model and the data."""
        logits = np.asarray(logits)
        want = f"({images}, {self.num_classes if self.num_classes is not None else 'classes'})"
        if logits.ndim != 2 or logits.shape[0] != images:
            raise ModelFileError(f"teacher.onnx '{self.path}' gives outputs of shape {tuple(logits.shape)} for a "
                                 f"batch of {images} images; expected {want}: one logit per class")
        if self.class_names is not None and logits.shape[1] != len(self.class_names):
            raise ModelFileError(f"teacher.onnx '{self.path}' names {len(self.class_names)} classes "
                                 f"({CLASS_NAMES}) but gives {logits.shape[1]} logits per image; re-export it")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ConfigError(f"teacher.onnx '{self.path}' gives {logits.shape[1]} logits per image, the data has "
                              f"{self.num_classes} classes; use a teacher made for the data's classes")
        logits = logits.astype(np.float32)
        if not bool(np.isfinite(logits).all()):
            raise ModelFileError(f"teacher.onnx '{self.path}' gives non-finite logits (NaN or inf) on a real batch "
                                 f"of the data ({images} images): the model is broken or expects other inputs "
                                 "(normalization, size); fix or re-export the teacher")
        return logits


def generic_names(names) -> bool:
    """'0', '1', ... in order: what edgekd calls the classes of a dataset that names none."""
    return tuple(names) == tuple(str(i) for i in range(len(names)))


def class_order(teacher_names, data_names: tuple, path: str) -> tuple[list | None, str | None]:
    """(indices that put the teacher's logits in the data's class order, or None when they
    are in it already; a note for the log and the record, or None). ConfigError (exit 2)
    when the teacher's classes are another set than the data's."""
    from edgekd.runtime.datamatch import folder_forms, shown_names

    if teacher_names is None:
        return None, (f"the ONNX teacher names no classes (no {CLASS_NAMES}): its {len(data_names)} logits are "
                      "taken in the data's class order, unchecked")
    index = {}  # a data class name -> the teacher's logit; image folders write 'T-shirt/top' as T-shirt_top
    for i, name in enumerate(teacher_names):
        for form in folder_forms(name):
            index.setdefault(form, i)
    index.update({name: i for i, name in enumerate(teacher_names)})  # an exact name comes first
    order = [index.get(name) for name in data_names]
    if None not in order and sorted(order) == list(range(len(teacher_names))):  # the same set of classes
        if order == sorted(order):
            return None, None
        return order, (f"the ONNX teacher's logits are reordered from its class order ({shown_names(teacher_names)}) "
                       f"to the data's ({shown_names(data_names)})")
    if len(teacher_names) == len(data_names) and (generic_names(data_names) or generic_names(teacher_names)):
        # numbered '0', '1', ...: that side names no classes, so there is nothing to compare by name
        return None, (f"classes matched by index, unchecked: the {'data' if generic_names(data_names) else 'teacher'} "
                      "names no classes")
    raise ConfigError(f"teacher.onnx '{path}' was trained on other classes than the data's: teacher classes: "
                      f"{shown_names(teacher_names)}; data classes: {shown_names(data_names)}; use a teacher made "
                      "for the data's classes")


def open_teacher(path: str | Path, spec, provider: str = "cpu") -> OnnxTeacher:
    """teacher.onnx for the data of `spec`: its normalization and class order (the one way the
    teacher stage, a resumed run and preflight open it)."""
    return OnnxTeacher(path, data_mean=spec.mean, data_std=spec.std, data_class_names=spec.class_names,
                       provider=provider)


def check_on_batch(path: str | Path, spec, images: torch.Tensor) -> OnnxTeacher:
    """Preflight: teacher.onnx takes the data's input and gives checked logits (classes, shape,
    finite) on `images`, a real batch of the data: each batch of the run is checked the same way."""
    teacher = open_teacher(path, spec)
    teacher.check_input((spec.channels, spec.height, spec.width))
    teacher(images)
    return teacher


def check_usable(terms: list, where: str = "distill.terms") -> None:
    """Feature and relation terms read the teacher's layers, which an ONNX teacher does not expose."""
    if terms:
        kinds = ", ".join(sorted({t["kind"] for t in terms}))
        raise ConfigError(f"{where} ({kinds}) read the teacher's layers, and an ONNX teacher (teacher.onnx) has "
                          "none to read; remove distill.terms or give the teacher as PyTorch weights")
