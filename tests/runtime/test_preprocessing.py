"""edgekd.runtime.preprocessing: presets, the stated values, what wins over what, the arithmetic
(edgekd.data.normalize's), colour order and layout, and the metadata export writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.data.normalize import normalize
from edgekd.errors import ConfigError, DataError, ModelFileError
from edgekd.runtime.inputs import preprocess
from edgekd.runtime.preprocessing import (
    METADATA,
    PRESETS,
    apply,
    check_stated,
    from_metadata,
    geometry,
    metadata_entries,
    resolve,
)

X = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
EDGEKD_META = {"edgekd.mean": "[0.5]", "edgekd.std": "[0.25]"}


def test_flag_strings_become_plain_values():
    stated = check_stated({"preset": "ImageNet", "mean": "0.5, 0.4,0.3", "std": "0.2", "scale": "2/255",
                           "layout": "nhwc", "channel_order": "BGR", "input_size": "224x200", "crop_fraction": "0.875"},
                          where="")
    assert stated == {"preset": "imagenet", "mean": [0.5, 0.4, 0.3], "std": [0.2], "scale": 2 / 255,
                      "layout": "NHWC", "channel_order": "bgr", "input_size": [224, 200], "crop_fraction": 0.875}
    assert check_stated({"input_size": "96"}, where="")["input_size"] == [96, 96]
    assert check_stated({"mean": [1, 2, 3]})["mean"] == [1.0, 2.0, 3.0]  # a recipe's list
    assert check_stated(None) is None


@pytest.mark.parametrize("stated, flag", [
    ({"mean": "0.5,0.5"}, "--mean"), ({"mean": "a"}, "--mean"), ({"mean": "0.5,"}, "--mean"),
    ({"mean": "nan"}, "--mean"), ({"std": "0"}, "--std"), ({"std": "1,-1,1"}, "--std"),
    ({"mean": "1,2,3", "std": "1,2"}, "--std"), ({"scale": "0"}, "--scale"), ({"scale": "1/0"}, "--scale"),
    ({"scale": "inf"}, "--scale"), ({"layout": "NWHC"}, "--layout"), ({"channel_order": "rbg"}, "--channel-order"),
    ({"input_size": "0,5"}, "--input-size"), ({"input_size": "a,b"}, "--input-size"),
    ({"input_size": "1,2,3"}, "--input-size"), ({"input_size": "99999"}, "--input-size"),
    ({"crop_fraction": "0"}, "--crop-fraction"), ({"crop_fraction": "1.5"}, "--crop-fraction"),
    ({"preset": "imagenet21k"}, "--preprocess"), ({"std": "1e-45"}, "--std"),
])
def test_bad_values_name_their_flag(stated, flag):
    with pytest.raises(ConfigError, match=flag) as info:
        check_stated(stated, where="")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_recipe_keys_are_named_and_unknown_ones_refused():
    with pytest.raises(ConfigError, match=r"bench\.preprocess\.layout"):
        check_stated({"layout": "CHW"})
    with pytest.raises(ConfigError, match="unknown key 'mena'"):
        check_stated({"mena": [0.5]})


def test_what_wins():
    assert resolve(None, {}) is None and resolve({"preset": "edgekd"}, {}) is None  # nothing known: no accuracy
    own = resolve(None, EDGEKD_META)
    assert own.source == METADATA and own.mean == (0.5,) and own.scale == 1 / 255
    assert resolve({"preset": "edgekd", "layout": "NHWC"}, EDGEKD_META).layout == "NHWC"
    over = resolve({"mean": [0.1]}, EDGEKD_META)  # a flag over the model's metadata
    assert over.mean == (0.1,) and over.std == (0.25,) and over.stated == ("mean",)
    preset = resolve({"preset": "imagenet", "std": [1.0]}, EDGEKD_META)  # a preset replaces the metadata
    assert preset.mean == PRESETS["imagenet"].mean and preset.std == (1.0,) and preset.label("std") == "--std"
    assert resolve({"scale": 1.0}, {}).mean is None  # stated alone: defaults under it


def test_arithmetic_is_normalize_s():
    spec = resolve({"preset": "imagenet"}, {})
    np.testing.assert_array_equal(apply(spec, X), normalize(X, np.float32(spec.mean), np.float32(spec.std)))
    raw = apply(resolve({"preset": "none"}, {}), X)
    np.testing.assert_array_equal(raw, X.astype(np.float32))
    half = apply(resolve({"scale": "2/255", "mean": [1.0]}, {}), X)
    np.testing.assert_allclose(half, X * np.float32(2 / 255) - 1, rtol=1e-6)
    np.testing.assert_array_equal(preprocess(X, EDGEKD_META), normalize(X, [0.5], [0.25]))  # metadata path


def test_bgr_reverses_channels_with_their_mean_and_nhwc_transposes():
    rgb = apply(resolve({"preset": "imagenet"}, {}), X)
    bgr = apply(resolve({"preset": "imagenet", "channel_order": "bgr"}, {}), X)
    np.testing.assert_array_equal(bgr, rgb[:, ::-1])
    nhwc = apply(resolve({"preset": "imagenet", "layout": "NHWC", "channel_order": "bgr"}, {}), X)
    assert nhwc.flags.c_contiguous and nhwc.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(nhwc, rgb[:, ::-1].transpose(0, 2, 3, 1))
    grey = X[:, :1]
    np.testing.assert_array_equal(apply(resolve({"channel_order": "bgr"}, {}), grey), grey / np.float32(255))


def test_geometry_from_the_stated_size_or_the_model():
    imagenet = resolve({"preset": "imagenet"}, {})
    assert geometry(imagenet, ["N", 3, 224, 224]) == (3, 256, (224, 224))  # timm: floor(224 / 0.875)
    assert geometry(resolve({"preset": "imagenet", "layout": "NHWC"}, {}), ["N", 96, 128, 3]) == (3, 146, (96, 128))
    assert geometry(imagenet, ["N", 3, "H", "W"]) == (3, None, None)
    assert geometry(resolve({"preset": "none", "input_size": [32, 32]}, {}), ["N", 1, "H", "W"]) == (1, 32, (32, 32))
    # an npz eval set is resized only to a stated size (never silently to the model's)
    big = np.zeros((1, 3, 40, 40), np.uint8)
    assert apply(imagenet, big).shape == (1, 3, 40, 40)
    assert apply(resolve({"preset": "imagenet", "input_size": [32, 32]}, {}), big).shape == (1, 3, 32, 32)


def test_channel_counts_are_checked_against_the_images():
    with pytest.raises(DataError, match="--mean has 3 values but the images have 1 channels"):
        apply(resolve({"mean": [0.1, 0.2, 0.3]}, {}), X[:, :1])
    with pytest.raises(DataError, match="model metadata edgekd.mean has 2 values"):
        preprocess(X, {"edgekd.mean": "[0.1, 0.2]"})


@pytest.mark.parametrize("meta", [
    {"edgekd.std": "[0]"}, {"edgekd.preprocess": '{"center_crop": [4, 5], "scale": -1}'},
    {"edgekd.preprocess": '{"center_crop": [4, 5], "layout": "CHWN"}'}, {"edgekd.preprocess": '{"center_crop": 4}'},
])
def test_bad_metadata_is_a_model_file_error(meta):
    with pytest.raises(ModelFileError, match="metadata"):
        from_metadata(meta)


@pytest.mark.parametrize("stated", [
    {"preset": "imagenet"}, {"preset": "caffe"}, {"preset": "none"}, {"mean": [0.5], "std": [0.5], "scale": 2 / 255},
    {"preset": "inception", "crop_fraction": 1.0, "channel_order": "bgr"},
])
def test_export_metadata_reads_back_as_the_stated_preprocessing(stated):
    entries = metadata_entries(stated, channels=3, height=32, width=32)
    meta = {k: v for k, v in entries.items() if v is not None}
    spec, back = resolve(stated, {}), from_metadata(meta)
    assert back.source == METADATA and meta["edgekd.input_layout"] == "NCHW"
    for field in ("mean", "std", "scale", "layout", "channel_order"):
        assert getattr(back, field) == getattr(spec, field), field
    assert geometry(back, ["N", 3, 32, 32]) == geometry(spec, ["N", 3, 32, 32])
    at_size = np.random.default_rng(1).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)  # an eval.npz's
    np.testing.assert_array_equal(apply(back, at_size), apply(spec, at_size))
    steps = json.loads(meta["edgekd.preprocess"])
    assert steps["center_crop"] == [32, 32] and steps["color"] == "RGB"


def test_export_metadata_refusals():
    assert metadata_entries(None, channels=1, height=28, width=28) == {}
    assert metadata_entries({"preset": "edgekd"}, channels=1, height=28, width=28) == {}
    with pytest.raises(ConfigError, match="NCHW"):
        metadata_entries({"layout": "NHWC"}, channels=3, height=8, width=8)
    with pytest.raises(ConfigError, match="takes 1 channel"):
        metadata_entries({"preset": "imagenet"}, channels=1, height=8, width=8)
