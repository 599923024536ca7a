"""Where bench's eval data meets a model: what is checked before a top-1 is reported, so
that a wrong number is refused (exit 2) instead of printed.

- Classes. The data's class names (an image folder's subfolders, an .npz's `class_names`,
  a registered dataset's) are mapped to the model's `edgekd.class_names`: the label of an
  image is the index of its class's name among the model's. The data may hold a subset of
  the model's classes, in any order; a class the model does not know is refused, with both
  lists. A model without class names is benched with the data's own numbering, and the
  row's notes say so (image folders: sorted folder names).
- Size and channels. Eval arrays (an .npz, a dataset) whose channels or height x width
  differ from what the model takes are refused, unless --fit-data (bench.fit_data) asks to
  convert and resize them per the model's preprocessing; the notes say it was done. Image
  folders are decoded for the model (imagefolder.py), so they always fit.
- Preprocessing. The mean and std of the model's metadata (or stated) hold 1 value or one
  per input channel (from_metadata checks the rest: finite, std > 0, matching lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import DataError, ModelFileError
from edgekd.runtime.metadata import CLASS_NAMES, PREFIX, meta_json
from edgekd.runtime.preprocessing import METADATA, fit_images, geometry, image_dims, resolve

FIT_FLAG = "--fit-data"
SHOWN_CHARS = 200  # of class names listed in one message (each list); more are counted


@dataclass(frozen=True)
class EvalSet:
    """What bench knows of its eval data besides the pixels: the labels in the data's own
    numbering and what the numbers stand for."""

    y: np.ndarray | None  # int64, one per image; None: no labels
    class_names: tuple | None  # label i is class_names[i]; None: the data names no classes
    where: str  # "image folder 'X'", "eval set 'X'": for messages
    from_folders: bool = False  # an image folder: class_names are its (sorted) folder names, the
    # images are decoded for the models (always their size), names matched with folder_forms


def model_class_names(meta: dict, path) -> tuple | None:
    """The model's edgekd.class_names (None when absent); anything but a JSON list of
    distinct strings is a ModelFileError (exit 2)."""
    names = meta_json(meta, CLASS_NAMES)
    if names is None:
        return None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        raise ModelFileError(f"model metadata {CLASS_NAMES} of '{path}' must be a JSON list of distinct "
                             f"names, got {str(meta[CLASS_NAMES])[:40]!r}; re-export the model")
    return tuple(names)


def folder_forms(name: str) -> set:
    """The folder names that stand for class `name`: itself, and, since no folder name holds a
    '/', the name with '/' (and '\\') written as '_' or '-' (Fashion-MNIST's T-shirt/top:
    T-shirt_top or T-shirt-top)."""
    forms = {name}
    if "/" in name or "\\" in name:
        forms |= {name.replace("/", c).replace("\\", c) for c in "_-"}
    return forms


def shown_names(names) -> str:
    """The names for a one-line message: the first ones, up to SHOWN_CHARS, and how many in all."""
    names, shown = list(names), []
    for name in names:
        text = "".join(c if c.isprintable() else "?" for c in str(name)[:40])  # a folder name may hold a newline
        if sum(len(n) + 2 for n in shown) + len(text) > SHOWN_CHARS:
            break
        shown.append(text)
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(shown) < len(names) else "")


def labels_for_model(labels: EvalSet, meta: dict, path) -> tuple[np.ndarray | None, str | None]:
    """(labels in the model's class indices, a note or None). DataError (exit 2) when the data
    has a class the model does not know, or labels beyond its own class names."""
    if labels.y is None:
        return None, None
    data_names = labels.class_names
    if data_names is not None and len(labels.y) and int(labels.y.max()) >= len(data_names):
        raise DataError(f"{labels.where}: labels go up to {int(labels.y.max())} but it names {len(data_names)} "
                        "classes (class_names); save one name per class")
    model_names = model_class_names(meta, path)
    if model_names is None or data_names is None:
        if data_names is None and model_names is None:
            return labels.y, None
        if data_names is None:
            return labels.y, (f"labels taken as the model's class indices, unchecked: {labels.where} names no "
                              "classes (save class_names with it)")
        how = "by sorted folder name" if labels.from_folders else "as the eval set's class_names"
        return labels.y, (f"classes numbered {how} ({shown_names(data_names)}), unchecked: the model has no "
                          f"{CLASS_NAMES}")
    index = {}
    for i, name in enumerate(model_names):
        for form in folder_forms(name) if labels.from_folders else {name}:
            index.setdefault(form, i)  # an exact name comes first: forms are added in class order
    index.update({name: i for i, name in enumerate(model_names)})
    unknown = [n for n in data_names if n not in index]
    if unknown:
        kind = "folder" if labels.from_folders else "data"
        raise DataError(f"{labels.where} has classes that '{Path(path).name}' does not know ({shown_names(unknown)}); "
                        f"{kind} classes: {shown_names(data_names)}; model classes: {shown_names(model_names)}; "
                        "bench it on data of the model's classes")
    return np.array([index[n] for n in data_names], dtype=np.int64)[labels.y], None


def check_mean_std_channels(spec, channels: int | None, path) -> None:
    """ModelFileError (exit 2) when the model's metadata mean or std holds neither 1 value nor
    one per input channel; stated values are checked against the images (apply)."""
    if channels is None or spec is None:
        return
    for name, values in (("mean", spec.mean), ("std", spec.std)):
        if values is not None and len(values) not in (1, channels) and name not in spec.stated \
                and spec.source == METADATA:
            raise ModelFileError(f"model metadata {PREFIX}{name} of '{path}' is {[float(v) for v in values][:8]}, "
                                 f"{len(values)} values, but the model takes {channels} channel(s); give 1 or "
                                 f"{channels} values: re-export the model")


def _dims(channels, size) -> str:
    return f"{channels or '?'}x{size[0]}x{size[1]}" if size is not None else f"{channels or '?'} channel(s)"


def check_fits(x_shape, spec, input_shape, path, fit: bool, where: str) -> str | None:
    """None when eval arrays of `x_shape` (N, C, H, W) are what the model takes (its
    preprocessing's or its input's channels and size); else, with `fit`, the note that they
    were converted, and without it a DataError (exit 2) naming both shapes and FIT_FLAG."""
    channels, _, crop = geometry(spec, input_shape)
    have_channels, have_size = int(x_shape[1]), tuple(int(d) for d in x_shape[2:])
    if (channels is None or channels == have_channels) and (crop is None or tuple(crop) == have_size):
        return None
    have, want = _dims(have_channels, have_size), _dims(channels or have_channels, crop or have_size)
    if not fit:
        raise DataError(f"{where} holds {have} images but '{Path(path).name}' expects {want}; pass {FIT_FLAG} to "
                        "convert and resize them per the model's preprocessing (the result notes it), or use an "
                        "eval set made for this model")
    return f"eval images {have} converted and resized to {want} ({FIT_FLAG})"


def takes_images(inp) -> bool:
    """Eval-set images fit float32 N x C x H x W inputs (what edgekd exports); other
    models (token ids, feature vectors, uint8 pixels) get synthetic input."""
    return inp.type == "tensor(float)" and len(inp.shape) == 4


def check_models(data: EvalSet, x_shape, models: list, stated: dict | None, fit: bool) -> None:
    """Every check of this module for each image model of `models` ((path, metadata, first
    input) triples), before anything is decoded or timed: one that fails is exit 2 at once.
    x_shape: the eval arrays' shape; None for an image folder (decoded for the models)."""
    for path, meta, inp in models:
        if not takes_images(inp):
            continue
        labels_for_model(data, meta, path)
        spec = resolve(stated, meta)
        if spec is None:
            continue
        check_mean_std_channels(spec, spec.channels or image_dims(inp.shape, spec.layout)[0], path)
        if x_shape is not None:
            check_fits(x_shape, spec, inp.shape, path, fit, data.where)


def model_labels(eval_data: EvalSet | None, meta: dict, path, images: bool, spec) -> tuple:
    """(the eval labels in the model's class indices, or None; notes) for a model that takes
    `images` (labels_for_model); notes only where its images go through `spec` (else no
    accuracy is measured, and its row says why)."""
    if eval_data is None or not images:
        return None, []
    y, note = labels_for_model(eval_data, meta, path)
    return y, [note] if note and spec is not None else []


def fitted_images(eval_x, eval_data: EvalSet | None, spec, inp, path, fit: bool) -> tuple:
    """(uint8 images at the model's channels and size, a note or None): eval arrays that differ
    are refused unless `fit` (check_fits); an image folder was decoded for the model."""
    if eval_data is None or eval_data.from_folders:
        return eval_x, None
    note = check_fits(eval_x.shape, spec, inp.shape, path, fit, eval_data.where)
    if note is None:
        return eval_x, None
    fitted = fit_images(spec, eval_x, inp.shape)
    if check_fits(fitted.shape, spec, inp.shape, path, True, eval_data.where) is not None:  # still not its size
        raise DataError(f"{eval_data.where}: {FIT_FLAG} cannot bring its {_dims(eval_x.shape[1], eval_x.shape[2:])} "
                        f"images to what '{Path(path).name}' takes ({note}): its preprocessing names no resize; "
                        "use an eval set made for this model")
    return fitted, note
