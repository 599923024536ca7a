"""`edgekd bench --data FOLDER`: an image folder as the eval set. FOLDER/<class>/*.png (.jpg,
.jpeg, .bmp, .webp). A model with edgekd.class_names numbers the classes by their names
(edgekd.runtime.datamatch: a folder the model does not know is refused); without them the
class index is the position of the folder's name in sorted order, as edgekd's training and
torchvision's ImageFolder number them, and the result notes it.

The folder is listed and every image decoded by training's own lister and decoder
(edgekd.data.image_files: list_classes, decode_fitted, decoded whole): brought to the models' colour
and resized and center-cropped per their preprocessing (edgekd.runtime.preprocessing.geometry),
so all models of one bench share one uint8 array, pixel for pixel what training evaluated
(tests/data/test_decoder_parity.py). numpy and PIL (imported when a folder is read; a one-line
error says to install it); no torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from edgekd.data.image_files import FIRST_NAMED, Remedy, decode_fitted, list_classes, named_files, thread_map
from edgekd.errors import ConfigError, DataError
from edgekd.runtime.datamatch import EvalSet, check_models, takes_images
from edgekd.runtime.inputs import check_feed_size, load_eval_set
from edgekd.runtime.preprocessing import geometry, require_pillow, resolve

log = logging.getLogger("edgekd")
FOLDER_REMEDY = Remedy("replace or remove it (or pass --skip-bad)",
                       "use smaller images, or remove this one from the folder (or pass --skip-bad)")


def list_image_folder(root: Path) -> tuple[list, np.ndarray, tuple]:
    """(files, int64 labels, class names) of root/<class>/<image>; DataError when the folder
    has no class folders or no images at all (an empty class folder keeps its index)."""
    layout = f"{root}/<class>/*.png (one folder per class)"
    found, class_names, _ = list_classes(root, layout, every_class=False)
    return [str(f) for f, _ in found], np.array([y for _, y in found], dtype=np.int64), class_names


def model_input(path):
    """(metadata, first input) of a model, from a session without graph optimizations (cheap);
    None when it cannot be opened here (its own row reports why)."""
    from edgekd.runtime.session import cpu_session

    try:
        session = cpu_session(path, graph_optimization="disable", log_severity=3)
    except Exception as exc:  # noqa: BLE001 - ORT's errors share no base class
        log.debug("eval data: cannot read the input of %s: %s", path, exc)
        return None
    return session.get_modelmeta().custom_metadata_map, session.get_inputs()[0]


def read_models(paths: list) -> list:
    """(path, metadata, first input) of each model that model_input opens."""
    return [(path, *opened) for path in paths if (opened := model_input(path)) is not None]


def models_geometry(models: list, stated: dict | None) -> tuple | None:
    """(channels, resize, crop) that every image model of `models` (read_models) needs, or None
    when none of them has preprocessing (no accuracy: nothing to decode). ConfigError when a
    model's input size is not fixed and not stated, or when the models need different images."""
    found = {}
    for path, meta, inp in models:
        if not takes_images(inp):
            continue
        spec = resolve(stated, meta)
        if spec is None:
            continue
        channels, resize, crop = geometry(spec, inp.shape)
        if crop is None:
            raise ConfigError(f"'{path}' takes images of any size ({list(inp.shape)}): state --input-size H,W "
                              "to bench it on an image folder")
        found.setdefault((channels or 3, resize or max(crop), tuple(crop)), []).append(Path(path).name)
    if len(found) > 1:
        shown = "; ".join(f"{', '.join(names[:2])}: {c}x{h}x{w} from a shorter side of {r}"
                          for (c, r, (h, w)), names in found.items())
        raise ConfigError(f"the models need different images ({shown[:200]}); bench them one at a time, or "
                          "state --input-size H,W")
    return next(iter(found), None)


def _decode(file: str, mode: str, resize: int, crop: tuple) -> np.ndarray:
    """uint8 (C, H, W): training's evaluation decode (edgekd.data.image_files.decode_fitted), its
    errors naming what to do with a file of this folder."""
    return decode_fitted(file, mode, resize, crop, FOLDER_REMEDY)


def load_image_folder(root, files: list, wanted: tuple, skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x C x H x W, positions into `files` decoded): the folder's images `files`
    (list_image_folder) at `wanted` (channels, resize, crop). The decoded set must fit the feed
    limit (with its float32 copy) before any image is decoded. A file that cannot be decoded is
    a DataError naming it, or with `skip_bad` left out, logged with the first files skipped."""
    require_pillow(f"reading the image folder '{root}'")
    channels, resize, crop = wanted
    check_feed_size([len(files), channels, *crop], np.float32, f"the {len(files)} images of '{root}' as float32",
                    "use fewer images (or a smaller --input-size)", error=DataError)
    mode = "L" if channels == 1 else "RGB"

    def one(file: str) -> np.ndarray | None:
        try:
            return _decode(file, mode, resize, crop)
        except DataError:
            if not skip_bad:
                raise
            return None  # unreadable, truncated or too large: counted below

    decoded = thread_map(one, files, os.cpu_count() or 1)
    kept = np.array([i for i, image in enumerate(decoded) if image is not None], dtype=np.int64)
    bad = [files[i] for i, image in enumerate(decoded) if image is None]
    if bad:
        named = named_files(bad[:FIRST_NAMED], len(bad))
        if not len(kept):
            raise DataError(f"every image of the image folder '{root}' is unreadable ({named}); check the folder")
        log.warning("skipped %d unreadable image(s) of the image folder '%s' (--skip-bad): %s", len(bad), root, named)
    return np.stack([decoded[i] for i in kept]), kept


def load_eval_data(eval_set, paths: list, stated: dict | None, fit: bool = False, skip_bad: bool = False) -> tuple:
    """(x uint8 NCHW or None, EvalSet or None) for bench: an image folder decoded for `paths`
    (x None when no model has preprocessing: only labels), else load_eval_set's .npz or
    dataset. Every model is checked against the data first (datamatch.check_models: classes,
    size and channels unless `fit`, metadata mean and std), before anything is decoded.
    `skip_bad`: a folder's files that cannot be decoded are left out (and logged), not refused."""
    if eval_set is None:
        return None, None
    models = read_models(paths)
    if not Path(eval_set).is_dir():
        x, y, names = load_eval_set(eval_set)
        data = EvalSet(y, None if names is None else tuple(names), f"eval set '{eval_set}'")
        check_models(data, x.shape, models, stated, fit)
        return x, data
    files, y, names = list_image_folder(Path(eval_set))
    data = EvalSet(y, names, f"image folder '{eval_set}'", from_folders=True)
    check_models(data, None, models, stated, fit)
    wanted = models_geometry(models, stated)
    if wanted is None:
        return None, data
    x, kept = load_image_folder(eval_set, files, wanted, skip_bad)
    return x, dataclasses.replace(data, y=y[kept])
