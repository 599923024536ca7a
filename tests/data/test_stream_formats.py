"""Image files of mixed sizes, formats and modes (an image folder, CSV and JSONL manifests),
the data section's preprocessing keys, and the evaluation geometry shared with the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.data.config import DataConfig
from edgekd.data.preprocess import crop_box, fit_array, fit_image, resized_size
from edgekd.data.splits import load_splits
from edgekd.errors import ConfigError, DataError
from imagefiles import CLASSES, draw, save, write_folder

REPO = Path(__file__).resolve().parents[2]


def test_imagefolder_of_mixed_images_is_streamed_at_image_size(image_folder):
    folder = image_folder(per_class=8, test_per_class=3)
    splits = load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=32, calib_size=6,
                                    workers=0), seed=0)
    spec = splits.spec
    assert (spec.channels, spec.height, spec.width, spec.resize) == (3, 32, 32, 37)  # 32 / 0.875
    assert spec.class_names == CLASSES and spec.num_classes == 3
    assert splits.stream.kind == "files" and splits.train_x is None
    assert len(splits.train_y) + len(splits.stream.val) == 24 and len(splits.stream.train) == len(splits.train_y)
    for x in (splits.val_x, splits.test_x, splits.calib_x):
        assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32)
    assert splits.test_x.shape[0] == 9 and splits.calib_x.shape[0] == 6
    # the same seed gives the same splits
    again = load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=32, calib_size=6, workers=2),
                        seed=0)
    assert again.stream.train.files == splits.stream.train.files
    np.testing.assert_array_equal(again.calib_x, splits.calib_x)
    np.testing.assert_array_equal(again.test_x, splits.test_x)
    assert again.spec == spec


def test_channels_and_presets(image_folder):
    folder = image_folder(per_class=4, test_per_class=1)
    grey = load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=[24, 32], channels=1,
                                  mean="imagenet", std=0.5, workers=0), seed=0)
    assert grey.val_x.shape[1:] == (1, 24, 32) and grey.stream.mode == "L"
    assert grey.spec.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),)) and grey.spec.std == (0.5,)
    rgb = load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=24, mean=[0.1, 0.2, 0.3],
                                 std="imagenet", workers=0), seed=0)
    assert rgb.spec.mean == (0.1, 0.2, 0.3) and rgb.spec.std == (0.229, 0.224, 0.225)


def test_same_size_folder_without_image_size_stays_in_memory(image_folder):
    folder = image_folder(per_class=4, test_per_class=1, sizes=((20, 20),))
    splits = load_splits(DataConfig(name="imagefolder", path=str(folder), workers=0), seed=0)
    assert splits.stream is None and splits.train_x.shape[1:] == (3, 20, 20) and splits.spec.resize is None
    streamed = load_splits(DataConfig(name="imagefolder", path=str(folder), workers=0, streaming=True), seed=0)
    assert streamed.stream.kind == "files" and streamed.spec.height == 20 and streamed.spec.resize is None


def test_mixed_sizes_without_image_size_say_to_set_it(image_folder):
    with pytest.raises(DataError, match="set data.image_size"):
        load_splits(DataConfig(name="imagefolder", path=str(image_folder(per_class=2, test_per_class=1)),
                               workers=0))


def test_default_run_stays_in_memory():
    splits = load_splits(DataConfig(), seed=0)
    assert splits.stream is None and splits.train_x.shape == (9000, 1, 28, 28) and splits.spec.resize is None


def test_large_arrays_are_streamed_as_uint8(tmp_path):
    import edgekd.data.splits as splits_module

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", train_x=rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8),
             train_y=np.arange(40) % 2, test_x=rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8),
             test_y=np.arange(10) % 2)
    cfg = DataConfig(name=str(tmp_path / "d.npz"), streaming=True, eval_size=3)
    splits = splits_module.load_splits(cfg, seed=0)
    assert splits.stream.kind == "arrays" and len(splits.stream.val[0]) == 4
    assert len(splits.val_x) == 3 and len(splits.test_x) == 3 and len(splits.calib_x) == 3
    assert splits.record["test_capped_from"] == 10


def write_manifest(folder: Path, kind: str, name: str = "list") -> Path:
    files = sorted(p for p in folder.glob("*/*/*.*"))
    if kind == "csv":
        path = folder / f"{name}.csv"
        path.write_text("path,label,split\n" + "".join(
            f"{p.relative_to(folder)},{p.parent.name},{p.parts[-3]}\n" for p in files))
    else:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"path": str(p.relative_to(folder)), "label": CLASSES.index(p.parent.name),
                                            "split": p.parts[-3]}) + "\n" for p in files))
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_lists_the_same_images_as_the_folder(image_folder, kind):
    folder = image_folder(per_class=5, test_per_class=2)
    manifest = write_manifest(folder, kind)
    cfg = dict(image_size=32, workers=0, calib_size=4)
    by_folder = load_splits(DataConfig(name="imagefolder", path=str(folder), **cfg), seed=3)
    by_manifest = load_splits(DataConfig(name="manifest", path=str(manifest), **cfg), seed=3)
    by_path = load_splits(DataConfig(name=str(manifest), **cfg), seed=3)  # data.name may be the file itself
    expected_names = CLASSES if kind == "csv" else ("0", "1", "2")
    assert by_manifest.spec.class_names == by_path.spec.class_names == expected_names
    for other in (by_manifest, by_path):
        np.testing.assert_array_equal(other.test_x, by_folder.test_x)
        np.testing.assert_array_equal(other.test_y, by_folder.test_y)
        assert sorted(other.stream.train.files) == sorted(by_folder.stream.train.files)


def test_manifest_folder_with_train_and_test_files(image_folder):
    folder = image_folder(per_class=3, test_per_class=1)
    files = sorted(folder.glob("*/*/*.*"))
    for split in ("train", "test"):
        (folder / f"{split}.csv").write_text("".join(f"{p.relative_to(folder)},{p.parent.name}\n"
                                                     for p in files if p.parts[-3] == split))
    splits = load_splits(DataConfig(name="manifest", path=str(folder), image_size=32, workers=0), seed=0)
    assert len(splits.test_y) == 3 and splits.spec.class_names == CLASSES


def test_manifest_without_split_is_refused(tmp_path):
    save(tmp_path / "a.png", draw(0, (8, 8), np.random.default_rng(0)), "PNG", "RGB")
    (tmp_path / "m.csv").write_text("a.png,0\n")
    with pytest.raises(DataError, match="needs a split"):
        load_splits(DataConfig(name="manifest", path=str(tmp_path / "m.csv")))


@pytest.mark.parametrize("raw, message", [
    ({"image_size": 1}, "between 2 and"), ({"image_size": [32, 32, 3]}, "[height, width]"),
    ({"image_size": "big"}, "image_size"), ({"channels": 2}, "1 (grey) or 3"), ({"mean": "cifar"}, "data.mean"),
    ({"std": [0.2, 0]}, "data.std"), ({"std": 0}, "positive"), ({"streaming": "maybe"}, "data.streaming"),
    ({"augment_policy": "autoaugment"}, "trivialaugment"), ({"workers": -1}, "data.workers"),
    ({"crop_fraction": 0}, "crop_fraction"), ({"eval_size": 0}, "data.eval_size"),
])
def test_bad_data_keys_are_refused(raw, message):
    from edgekd.recipe import Recipe

    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"data": raw})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_new_keys_from_yaml():
    from edgekd.recipe import Recipe

    cfg = Recipe.from_dict({"data": {"image_size": [224, 160], "mean": "imagenet", "std": [0.2, 0.2, 0.2],
                                     "streaming": False, "skip_bad": True, "augment_policy": "trivialaugment"}}).data
    assert cfg.crop == (224, 160) and cfg.resize == 256 and cfg.streaming is False and cfg.worker_count() >= 0


@pytest.mark.parametrize("size", [(37, 50), (64, 33), (32, 32), (100, 41), (45, 45)])
def test_evaluation_geometry_is_torchvisions(size):
    """fit_image (numpy + PIL, what the device runs) gives torchvision v2's Resize + CenterCrop pixels."""
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    rgb = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB")
    expected = v2.Compose([v2.Resize(37, interpolation=v2.InterpolationMode.BILINEAR), v2.CenterCrop([32, 28]),
                           v2.PILToTensor()])(image)
    got = np.asarray(fit_image(image, 37, (32, 28))).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expected.numpy())
    h, w = resized_size(*size, 37)
    left, top, right, bottom = crop_box(h, w, (32, 28))
    assert min(h, w) == 37 and (right - left, bottom - top) == (28, 32)
    # arrays, channel by channel, as the RGB image
    np.testing.assert_array_equal(fit_array(rgb.transpose(2, 0, 1)[None], 37, (32, 28))[0], expected.numpy())
    assert torch.is_tensor(expected)


def test_data_package_loads_no_torch():
    code = ("import importlib, pkgutil, sys, edgekd.data, edgekd.data.formats\n"
            "for pkg in (edgekd.data, edgekd.data.formats):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_folder_helper_writes_every_mode(tmp_path):
    from PIL import Image

    folder = write_folder(tmp_path / "f", per_class=3, test_per_class=0)
    modes = set()
    for path in folder.glob("train/*/*"):
        with Image.open(path) as image:
            modes.add(image.mode)
    assert {"RGB", "L", "RGBA", "P", "CMYK"} <= modes
