"""The edgekd.* entries of an ONNX model's metadata_props, the file format `edgekd bench`
reads: one constant per key, the writers (model_entries, set_metadata) and the readers
(props, meta_json, meta_int, meta_floats). Every module names a key through these constants.

Needs only numpy (no torch, no onnx, no onnxruntime): `edgekd bench` imports it on the device.
"""

from __future__ import annotations

import json

import numpy as np

from edgekd.errors import DataError, ModelFileError

PREFIX = "edgekd."
VERSION = "edgekd.version"  # the edgekd that wrote the file
STAGE = "edgekd.stage"  # which model of the run: teacher, student, int8, ...
ARCH = "edgekd.arch"
NAME = "edgekd.name"  # `edgekd export --name`
PRECISION = "edgekd.precision"  # fp16 exports only
INPUT_LAYOUT = "edgekd.input_layout"  # NCHW
INPUT_SHAPE = "edgekd.input_shape"  # JSON [channels, height, width]
MEAN = "edgekd.mean"  # JSON list, one per channel or one for all
STD = "edgekd.std"
PREPROCESS = "edgekd.preprocess"  # JSON: every step from a decoded image to the input
CLASS_NAMES = "edgekd.class_names"  # JSON list, in logit order
PARAMS = "edgekd.params"  # counts, decimal
MACS = "edgekd.macs"

INT_METADATA_MAX = 2**63 - 1  # PARAMS, MACS: counts that fit an int64


def model_entries(*, version: str, stage: str, arch: str, spec, preprocess: str, params: int,
                  macs: int) -> dict[str, str]:
    """Every entry an exported model carries, in the order they are written; spec: the data's
    channels, height, width, mean, std and class_names; preprocess: the PREPROCESS JSON."""
    return {
        VERSION: version,
        STAGE: stage,
        ARCH: arch,
        INPUT_LAYOUT: "NCHW",
        INPUT_SHAPE: json.dumps([spec.channels, spec.height, spec.width]),
        MEAN: json.dumps(list(spec.mean)),
        STD: json.dumps(list(spec.std)),
        PREPROCESS: preprocess,
        CLASS_NAMES: json.dumps(list(spec.class_names)),
        PARAMS: str(params),
        MACS: str(macs),
    }


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    """Write `metadata` into an onnx ModelProto: existing keys are updated, new ones added."""
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value


def props(model_proto) -> dict[str, str]:
    """An onnx ModelProto's metadata_props as a dict (what a session's custom_metadata_map holds)."""
    return {p.key: p.value for p in model_proto.metadata_props}


def _shown(text) -> str:
    return repr(str(text)[:40])


def meta_json(meta: dict, key: str):
    """The JSON value of metadata entry `key` (None when absent); anything that is not JSON
    is a ModelFileError (exit 2)."""
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ModelFileError(
            f"model metadata {key} is not valid JSON ({_shown(meta[key])}); re-export the model"
        ) from exc


def meta_int(meta: dict, key: str) -> int | None:
    """Metadata entry `key` as a whole number from 0 to INT_METADATA_MAX (None when absent)."""
    if key not in meta:
        return None
    try:
        value = int(str(meta[key]).strip())
    except ValueError as exc:  # also: more digits than Python converts
        raise ModelFileError(
            f"model metadata {key} is not an integer ({_shown(meta[key])}); re-export the model"
        ) from exc
    if not 0 <= value <= INT_METADATA_MAX:
        raise ModelFileError(f"model metadata {key} must be a count from 0 to 2**63-1, got {_shown(meta[key])}; "
                             "re-export the model")
    return value


def meta_floats(meta: dict, key: str, channels: int | None) -> np.ndarray | None:
    """Metadata entry `key` (MEAN, STD) as float64 values, one per channel or one for all
    (None when absent): a JSON list of 1 or `channels` numbers that float32 holds, not empty
    (any count with channels None: checked where the images are known)."""
    values = meta_json(meta, key)
    if values is None and key not in meta:
        return None
    ok = isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if ok:
        try:
            array = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            ok = False
    if not ok or not len(array) or not (np.abs(array) <= np.finfo(np.float32).max).all():  # NaN fails too
        raise ModelFileError(f"model metadata {key} must be a JSON list of finite float32 numbers, got "
                             f"{_shown(meta[key])}; re-export the model")
    if channels is not None and len(array) not in (1, channels):
        raise DataError(
            f"model metadata {key} has {array.size} values but the images have {channels} channels; "
            "use an eval set made for this model"
        )
    return array
