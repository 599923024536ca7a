"""What turns uint8 images into a model's input, stated or read from its metadata: the one
place that defines the presets, checks the `--preprocess/--mean/--std/--scale/--layout/
--channel-order/--input-size/--crop-fraction` values (bench and export share them) and applies
them to images.

    stated = check_stated({"preset": "imagenet", "layout": "NHWC"})  # flags or a recipe's dict
    spec = resolve(stated, meta)        # None: neither stated nor in the metadata
    x = apply(spec, x_uint8_nchw)

Geometry first (grey <-> RGB, the shorter side resized, center crop: edgekd.data.preprocess,
as training does), then colour order, then (x * scale - mean) / std per channel
(edgekd.data.normalize), then the layout. mean and std list the red, green and blue values
whatever the channel order (a BGR model gets them reversed with its channels), so presets
combine with `--channel-order bgr`. numpy only (PIL to resize); no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from edgekd.errors import ConfigError, DataError, ModelFileError
from edgekd.runtime.feedlimit import check_feed_size
from edgekd.runtime.metadata import (
    INPUT_LAYOUT,
    MEAN,
    PREFIX,
    PREPROCESS,
    STD,
    meta_floats,
    meta_json,
)

DEFAULT_SCALE = 1 / 255
MAX_PREPROCESS_SIDE = 16384  # pixels: edgekd.preprocess sizes beyond this are not a model's input
MAX_SCALE = 1e6
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("rgb", "bgr")
FIELDS = ("mean", "std", "scale", "layout", "channel_order", "input_size", "crop_fraction")
METADATA = "edgekd metadata"
NO_PREPROCESSING_NOTE = ("accuracy not measured: the model has no edgekd preprocessing metadata and none was "
                         "stated (x/255 would be a guess, and a wrong number is worse than none); state it with "
                         "--preprocess imagenet|inception|clip|caffe|none or --mean/--std/--scale")


@dataclass(frozen=True)
class Preprocessing:
    """One model's preprocessing. channels (1 grey, 3 RGB), crop (H, W) and resize (the shorter
    side) are None where the model's fixed input decides; with resize None and crop_fraction
    set, the shorter side becomes the crop's longer side / crop_fraction (timm's crop_pct)."""

    source: str  # METADATA, "preset NAME" or "stated"
    mean: tuple | None = None
    std: tuple | None = None
    scale: float = DEFAULT_SCALE
    layout: str = "NCHW"
    channel_order: str = "rgb"
    channels: int | None = None
    crop: tuple | None = None
    resize: int | None = None
    crop_fraction: float | None = 1.0  # None: only metadata's resize (old models: none, images pass as they are)
    stated: tuple = ()  # the fields given by flags over the source

    def label(self, name: str) -> str:
        """Where a value came from, for error messages."""
        if name in self.stated:
            return f"--{name.replace('_', '-')}"
        return f"model metadata {PREFIX}{name}" if self.source == METADATA else f"the {self.source}'s {name}"

    def describe(self) -> dict:
        """The JSON form in a bench row."""
        out = dataclasses.asdict(self)
        out["stated"] = list(self.stated)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


PRESETS = {
    "edgekd": None,  # the model's own metadata (the default)
    "imagenet": Preprocessing("preset imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_fraction=0.875),
    "inception": Preprocessing("preset inception", (0.5,), (0.5,), crop_fraction=0.875),  # pixels to [-1, 1]
    "clip": Preprocessing("preset clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # Keras/Caffe VGG and ResNet50: BGR, 0-255 minus the ImageNet mean (listed R, G, B as every mean here)
    "caffe": Preprocessing("preset caffe", (123.68, 116.779, 103.939), (1.0,), scale=1.0, channel_order="bgr",
                           crop_fraction=0.875),
    "none": Preprocessing("preset none", scale=1.0),  # raw float pixels 0-255
}


def _numbers(value, label: str, *, count_ok=(1, 3)) -> list:
    """'0.5,0.4' or [0.5, 0.4] -> finite float32-sized numbers, 1 or 3 of them."""
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        numbers = [float(v) for v in items if not isinstance(v, bool) and (not isinstance(v, str) or v.strip())]
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{label}: expected numbers separated by commas, got {str(value)[:40]!r}") from None
    if len(numbers) != len(items):
        raise ConfigError(f"{label}: expected numbers separated by commas, got {str(value)[:40]!r}")
    if len(numbers) not in count_ok:
        raise ConfigError(f"{label}: give one value for all channels or one per channel (3: red, green, blue), "
                          f"got {len(numbers)}")
    if not all(math.isfinite(v) and abs(v) <= np.finfo(np.float32).max for v in numbers):
        raise ConfigError(f"{label}: expected finite numbers, got {str(value)[:40]!r}")
    return numbers


def _scale(value, label: str) -> float:
    """'1/255', '0.0039' or a number -> a finite number in (0, MAX_SCALE]."""
    text = str(value).strip()
    match = re.fullmatch(r"([^/]+)/([^/]+)", text)
    try:
        number = float(match[1]) / float(match[2]) if match else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ConfigError(f"{label}: expected a number such as 1/255 or 0.5, got {text[:40]!r}") from None
    if not (math.isfinite(number) and 0 < number <= MAX_SCALE):
        raise ConfigError(f"{label}: must be a number above 0 and at most {MAX_SCALE:g}, got {text[:40]!r}")
    return number


def _choice(value, label: str, choices: tuple) -> str:
    text = str(value).strip()
    for choice in choices:
        if text.lower() == choice.lower():
            return choice
    raise ConfigError(f"{label}: expected {' or '.join(choices)}, got {text[:40]!r}")


def _size(value, label: str) -> list:
    """'224,224', '224x224', '224' or [224, 224] -> [H, W], each 1..MAX_PREPROCESS_SIDE."""
    try:
        items = re.split(r"[,x]", value) if isinstance(value, str) else list(value)
        sides = [int(v) for v in items if not isinstance(v, (bool, float)) and (not isinstance(v, str) or v.strip())]
    except (TypeError, ValueError):
        sides = []
    if len(sides) != len(items):
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(1 <= v <= MAX_PREPROCESS_SIDE for v in sides):
        raise ConfigError(f"{label}: expected H,W (for example 224,224), each from 1 to {MAX_PREPROCESS_SIDE}, "
                          f"got {str(value)[:40]!r}")
    return sides


def _fraction(value, label: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not 0 < number <= 1:
        raise ConfigError(f"{label}: expected a number above 0 and at most 1 (0.875: resize 256, crop 224), "
                          f"got {str(value)[:40]!r}")
    return number


def check_range(mean, std, scale: float, error=ConfigError, label: str = "--mean / --std / --scale",
                hint: str = "state smaller values") -> None:
    """`error` unless std > 0 and every pixel 0..255 stays well inside float32 after scaling."""
    # empty lists pass here: apply() refuses them with the images' channel count
    if mean is not None and std is not None and len(mean) > 1 and len(std) > 1 and len(mean) != len(std):
        raise error(f"{label}: {len(mean)} mean values and {len(std)} std values; give 1 value for all channels "
                    f"or one per channel in both; {hint}")
    std_values = np.asarray(std if std is not None and len(std) else [1.0], dtype=np.float64)
    if not (std_values > 0).all():
        raise error(f"{label}: std must be positive, got {[float(v) for v in std_values[:3]]}; {hint}")
    mean_values = np.asarray(mean if mean is not None and len(mean) else [0.0], dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore"):
        largest = float(np.max(np.maximum(np.abs(mean_values), np.abs(255 * scale - mean_values)) / std_values))
    if not largest < float(np.finfo(np.float32).max) / 2:
        raise error(f"{label} turn pixels into inputs as large as {largest:.3g}, beyond float32; {hint}")


def check_stated(stated, where: str = "bench.preprocess") -> dict | None:
    """The stated preprocessing as plain values ({"preset": ..., "mean": [...], ...}: only the
    keys given), from flag strings or a recipe's values; ConfigError (exit 2) for anything else.
    `where` names recipe keys (where.mean); "" names the flags (--mean)."""
    if stated is None:
        return None
    if not isinstance(stated, dict):
        raise ConfigError(f"{where} must be a mapping of {', '.join(('preset',) + FIELDS)}")
    label = {k: (f"{where}.{k}" if where else f"--{k.replace('_', '-')}") for k in ("preset",) + FIELDS}
    if not where:
        label["preset"] = "--preprocess"
    unknown = [str(k)[:40] for k in stated if k not in label]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known: {', '.join(label)}")
    parse = {"mean": _numbers, "std": _numbers, "scale": _scale, "input_size": _size, "crop_fraction": _fraction,
             "layout": lambda v, lb: _choice(v, lb, LAYOUTS),
             "channel_order": lambda v, lb: _choice(v, lb, CHANNEL_ORDERS),
             "preset": lambda v, lb: _choice(v, lb, tuple(PRESETS))}
    out = {k: parse[k](v, label[k]) for k, v in stated.items() if v is not None}
    mean, std = out.get("mean"), out.get("std")
    if mean and std and len(mean) > 1 and len(std) > 1 and len(mean) != len(std):
        raise ConfigError(f"{label['mean']} has {len(mean)} values but {label['std']} has {len(std)}")
    base = PRESETS.get(out.get("preset")) or Preprocessing("stated")
    check_range(out.get("mean", base.mean), out.get("std", base.std), out.get("scale", base.scale),
                label=f"{label['mean']} / {label['std']} / {label['scale']}")
    return out


def _metadata_scale(value) -> float:
    if value is None or value == "x / 255":
        return DEFAULT_SCALE
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= MAX_SCALE:
        return float(value)
    raise ModelFileError(f"model metadata {PREPROCESS} scale is not 'x / 255' or a positive number "
                         f"({str(value)[:40]!r}); re-export the model")


def _check_metadata_lengths(meta: dict, mean, std, channels: int | None, color) -> None:
    """ModelFileError (exit 2) unless edgekd.mean and edgekd.std each hold 1 value or one per
    channel: the same count when both hold several, and the color's count when it is known."""
    counts = {key: len(v) for key, v in ((MEAN, mean), (STD, std)) if v is not None}
    several = {n for n in counts.values() if n > 1}
    if len(several) > 1 or (channels is not None and several - {channels}):
        shown = "; ".join(f"{key} {str(meta[key])[:60]} ({n} values)" for key, n in counts.items())
        per = f" ({channels}: {PREPROCESS} color is {color})" if channels is not None else ""
        raise ModelFileError(f"model metadata {shown}: each must hold 1 value or one per channel{per}, the same "
                             "count in both; re-export the model")


def from_metadata(meta: dict) -> Preprocessing | None:
    """The model's own preprocessing (edgekd.mean, edgekd.std, edgekd.preprocess), or None when
    it has none of them. Metadata that is not valid is a ModelFileError (exit 2)."""
    if not any(k in meta for k in (MEAN, STD, PREPROCESS)):
        return None
    mean, std = (meta_floats(meta, key, None) for key in (MEAN, STD))
    steps = meta_json(meta, PREPROCESS)
    steps = steps if isinstance(steps, dict) else {}
    crop, resize, color = steps.get("center_crop"), steps.get("resize_shorter"), steps.get("color")
    sides = [*(crop if isinstance(crop, list) and len(crop) == 2 else [None]), *([] if resize is None else [resize])]
    if PREPROCESS in meta and not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_PREPROCESS_SIDE for v in sides):
        raise ModelFileError(f"model metadata {PREPROCESS} is not a valid preprocessing "
                             f"({str(meta[PREPROCESS])[:40]!r}); re-export the model")
    try:
        layout = _choice(steps.get("layout") or meta.get(INPUT_LAYOUT) or "NCHW", "", LAYOUTS)
        order = _choice(steps.get("channel_order") or "rgb", "", CHANNEL_ORDERS)
    except ConfigError:
        raise ModelFileError(f"model metadata {PREPROCESS} has a layout or channel order edgekd does not "
                             "know; re-export the model") from None
    known_color = color in (None, "L", "RGB") or (isinstance(color, str) and re.fullmatch(r"\d+ channels", color))
    interpolation = steps.get("interpolation")
    if not known_color or interpolation not in (None, "bilinear"):  # edgekd writes "4 channels" for 4
        raise ModelFileError(f"model metadata {PREPROCESS} has color {str(color)[:40]!r} and interpolation "
                             f"{str(interpolation)[:40]!r}; bench applies color L, RGB or 'N channels' and bilinear "
                             "interpolation: re-export the model")
    channels = {"L": 1, "RGB": 3}.get(color)
    _check_metadata_lengths(meta, mean, std, channels, color)
    spec = Preprocessing(METADATA, None if mean is None else tuple(mean), None if std is None else tuple(std),
                         _metadata_scale(steps.get("scale")), layout, order, channels,
                         tuple(crop) if crop else None, resize, crop_fraction=None)
    if std is not None and not (std > 0).all():
        raise ModelFileError(f"model metadata {STD} must be positive, got {str(meta[STD])[:40]!r}; "
                             "re-export the model")
    check_range(spec.mean, spec.std, spec.scale, ModelFileError, f"model metadata {MEAN} / {STD}",
                "re-export the model")
    return spec


def resolve(stated: dict | None, meta: dict) -> Preprocessing | None:
    """What a model's images go through: the stated fields over a preset, or over the model's
    metadata (no preset, or `edgekd`); None when neither says anything (no accuracy then)."""
    stated = check_stated(stated) or {}
    preset = stated.get("preset")
    given = {k: v for k, v in stated.items() if k != "preset"}
    base = PRESETS[preset] if preset not in (None, "edgekd") else from_metadata(meta)
    if base is None:
        if preset == "edgekd" or not given:
            return None
        base = Preprocessing("stated")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if k not in ("input_size",)}
    if "input_size" in given or "crop_fraction" in given:  # a new geometry: metadata's resize is for its crop
        changes.update(resize=None, crop_fraction=given.get("crop_fraction", base.crop_fraction or 1.0))
    if "input_size" in given:
        changes["crop"] = tuple(given["input_size"])
    spec = dataclasses.replace(base, stated=tuple(given), **changes)
    if given.keys() & {"mean", "std", "scale"}:
        check_range(spec.mean, spec.std, spec.scale)
    return spec


def image_dims(input_shape, layout: str) -> tuple:
    """(C, H, W) of a 4-D image input in `layout`; a dim that is not a fixed positive int is None."""
    dims = list(input_shape)[1:4] if input_shape is not None and len(input_shape) == 4 else [None] * 3
    dims = [d if isinstance(d, int) and d > 0 else None for d in dims]
    return (dims[2], dims[0], dims[1]) if layout == "NHWC" else tuple(dims)


def geometry(spec: Preprocessing, input_shape) -> tuple:
    """(channels, resize, crop) for images fed to a model with `input_shape`: the stated or
    metadata values, else the model's fixed input; None where neither says."""
    channels, height, width = image_dims(input_shape, spec.layout)
    crop = spec.crop or ((height, width) if height and width else None)
    channels = spec.channels or (channels if channels in (1, 3) else None)
    resize = spec.resize
    if resize is None and crop is not None and spec.crop_fraction is not None:
        resize = max(1, int(max(crop) / spec.crop_fraction))  # timm: floor(size / crop_pct)
        from edgekd.data.preprocess import check_resize  # the check of data.crop_fraction too

        check_resize(resize, channels, spec.label("crop_fraction"))  # before any image is resized
    return channels, resize, crop


def require_pillow(what: str) -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs Pillow, which is not installed: pip install pillow") from None


def fit_images(spec: Preprocessing, x: np.ndarray, input_shape=None) -> np.ndarray:
    """uint8 (N, C, H, W) images brought to the colour and size that `spec` names (metadata's
    or --input-size), and the model's `input_shape` where given (bench --fit-data; else a wrong
    eval set stays an error): converted grey <-> RGB, the shorter side resized and
    center-cropped as training did. Images already at the crop size pass unchanged (a run's
    eval.npz)."""
    from edgekd.data.preprocess import convert_channels, fit_array

    channels, resize, crop = geometry(spec, input_shape)
    if channels is not None and x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[1] != channels:
        x = convert_channels(x, channels)
    if crop is not None and x.ndim == 4 and tuple(x.shape[2:]) != tuple(crop) and resize is not None \
            and min(x.shape[2:]) >= 2:
        check_feed_size([len(x), x.shape[1], *crop], np.uint8, "the eval images resized for the model",
                        "use fewer eval images", error=DataError)
        require_pillow("resizing the eval images")
        x = fit_array(x, resize, (crop[0], crop[1]))
    return x


def apply(spec: Preprocessing, x_uint8: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images -> the model's float32 input per `spec` (see the module's
    docstring): fit_images, colour order, normalize, layout."""
    from edgekd.data.normalize import normalize

    x = fit_images(spec, x_uint8)
    mean, std = (None if v is None else np.array(v, dtype=np.float64) for v in (spec.mean, spec.std))
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, x.shape[1]):
            hint = "use an eval set made for this model" if spec.source == METADATA else f"fix {spec.label(name)}"
            raise DataError(f"{spec.label(name)} has {len(values)} values but the images have {x.shape[1]} "
                            f"channels; {hint}")
    if spec.channel_order == "bgr" and x.shape[1] == 3:
        x = x[:, ::-1]  # mean and std are listed R, G, B: they follow their channels
        mean, std = (None if v is None or len(v) == 1 else v[::-1] for v in (mean, std))
    out = normalize(x, None if mean is None else mean.astype(np.float32),
                    None if std is None else std.astype(np.float32),
                    scale=None if spec.scale == DEFAULT_SCALE else spec.scale)  # None: x / 255, as training
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)) if spec.layout == "NHWC" else out


def metadata_entries(stated: dict | None, *, channels: int, height: int, width: int) -> dict:
    """The metadata entries (edgekd.mean, edgekd.std, edgekd.input_layout, edgekd.preprocess)
    that make `edgekd bench` apply the stated preprocessing to a model exported at (height,
    width); empty when nothing is stated. NHWC is refused: an exported PyTorch model is NCHW."""
    from edgekd.data.preprocess import preprocess_metadata

    spec = resolve(stated, {})
    if spec is None:
        return {}
    if spec.layout != "NCHW":
        raise ConfigError("--layout NHWC: edgekd export writes NCHW models (PyTorch's layout); drop the flag")
    for name, values in (("mean", spec.mean), ("std", spec.std)):
        if values is not None and len(values) not in (1, channels):
            give = "one value" if channels == 1 else f"1 or {channels} values"
            raise ConfigError(f"{spec.label(name)} has {len(values)} values but the model takes {channels} "
                              f"channel(s); give {give}")
    resize = geometry(spec, [1, channels, height, width])[1]
    steps = json.loads(preprocess_metadata(channels=channels, height=height, width=width, resize=resize,
                                           mean=spec.mean or (), std=spec.std or ()))
    if spec.scale != DEFAULT_SCALE:
        steps["scale"] = spec.scale
    steps["channel_order"] = spec.channel_order.upper()
    entries = {INPUT_LAYOUT: "NCHW", PREPROCESS: json.dumps(steps)}
    for key, values in ((MEAN, spec.mean), (STD, spec.std)):
        entries[key] = None if values is None else json.dumps(list(values))  # None: remove the data's entry
    return entries
