"""Bad data in an image folder or a manifest (issue #15, "Bad data"): corrupt and truncated
images, unreadable files, empty class folders and manifest
paths outside their folder. Each is one line with exit 2 before any training and leaves no
run directory, or, with data.skip_bad, is skipped and counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.errors import DataError
from imagefiles import CLASSES, write_folder

TINY = {
    "teacher": {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 8},
    "distill": {"arch": "tinycnn", "arch_args": {"width": 4}, "epochs": 1, "batch_size": 8},
}


def refused_by_cli(tmp_path: Path, data: dict, *expected: str) -> str:
    """`edgekd compress` on `data`: exit 2, one line naming `expected`, and no run directory."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad", "data": data, **TINY}))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["compress", str(recipe), "--out", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekd: error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()  # refused before the run directory was made
    return lines[0]


def truncate(path: Path, keep: float = 0.7) -> None:
    """Replace `path` with a noisy 80x64 image in its format cut to `keep` of its bytes: the
    header is intact, the pixel data ends early."""
    import numpy as np
    from PIL import Image

    fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix]
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def first(folder: Path, suffix: str, split: str = "train") -> Path:
    return sorted((folder / split).glob(f"*/*{suffix}"))[0]


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images", per_class=4, test_per_class=2)


@pytest.mark.parametrize("suffix, damage, reason", [
    (".jpg", "truncate", "cannot decode image"),
    (".png", "truncate", "cannot decode image"),
    (".webp", "garbage", "cannot read image"),
    (".bmp", "garbage", "cannot read image"),
])
def test_a_bad_image_is_refused_before_training_naming_it(tmp_path, folder, suffix, damage, reason):
    bad = first(folder, suffix)
    if damage == "truncate":
        truncate(bad)
    else:
        bad.write_bytes(b"this is not an image at all" * 10)
    line = refused_by_cli(tmp_path, {"name": "imagefolder", "path": str(folder), "image_size": 32},
                          reason, str(bad), "data.skip_bad")
    assert len(line) < 1100


def test_a_file_that_cannot_be_opened_is_refused(tmp_path, folder):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    bad = first(folder, ".png")
    bad.chmod(0)
    try:
        refused_by_cli(tmp_path, {"name": "imagefolder", "path": str(folder), "image_size": 32}, str(bad))
    finally:
        bad.chmod(0o644)


def test_a_file_the_system_refuses_to_open_is_refused(tmp_path, folder, monkeypatch):
    """The same refusal when the process may not read a file, also as root (which reads
    files whatever their permissions): PIL's open raises PermissionError for that file."""
    from PIL import Image

    bad = first(folder, ".png")
    real_open = Image.open

    def open_or_refuse(path, *args, **kwargs):
        if Path(path) == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_or_refuse)
    refused_by_cli(tmp_path, {"name": "imagefolder", "path": str(folder), "image_size": 32}, str(bad),
                   "Permission denied")


def test_an_image_smaller_than_the_crop_is_resized_up_and_counted(tmp_path, folder):
    import numpy as np

    from imagefiles import draw, save

    small = folder / "train" / CLASSES[1] / "tiny.png"
    save(small, draw(1, (20, 30), np.random.default_rng(0)), "PNG", "RGB")
    cfg = DataConfig(name="imagefolder", path=str(folder), image_size=32, workers=0, calib_size=4)
    assert load_splits(cfg, seed=0).record["upscaled_images"] >= 1  # issue 28: resized up, not refused


def test_an_empty_class_folder_is_refused(tmp_path, folder):
    (folder / "train" / "zebra").mkdir()
    refused_by_cli(tmp_path, {"name": "imagefolder", "path": str(folder), "image_size": 32},
                   "zebra", "has no images")


@pytest.mark.parametrize("row", ["../outside.png", "/etc/passwd", "sub/../../outside.png", "link.png"])
def test_a_manifest_path_outside_its_folder_is_refused(tmp_path, folder, row):
    outside = tmp_path / "outside.png"
    outside.write_bytes(first(folder, ".png").read_bytes())
    (folder / "link.png").symlink_to(outside)
    lines = ["path,label,split"] + [f"{p.relative_to(folder)},{p.parent.name},{p.parts[-3]}"
                                    for p in sorted(folder.glob("*/*/*.*"))]
    lines.append(f"{row},{CLASSES[0]},train")
    manifest = folder / "list.csv"
    manifest.write_text("\n".join(lines) + "\n")
    refused_by_cli(tmp_path, {"name": "manifest", "path": str(manifest), "image_size": 32}, "outside the manifest")


def test_skip_bad_skips_and_counts_every_kind(tmp_path, folder):
    import numpy as np

    from imagefiles import draw, save

    truncate(first(folder, ".jpg"))
    first(folder, ".webp").write_bytes(b"garbage" * 20)
    save(folder / "train" / CLASSES[2] / "small.png", draw(2, (10, 40), np.random.default_rng(1)), "PNG", "RGB")
    truncate(first(folder, ".png", split="test"))
    (folder / "train" / "zebra").mkdir()
    cfg = DataConfig(name="imagefolder", path=str(folder), image_size=32, skip_bad=True, workers=0, calib_size=4)
    splits = load_splits(cfg, seed=0)
    assert splits.record["skipped"] == {"empty_class_folders": 1, "train": {"corrupt": 1, "unreadable": 1},
                                        "test": {"corrupt": 1}}  # the small image is resized up (issue 28)
    assert splits.spec.class_names == CLASSES  # the empty folder is no class
    assert len(splits.train_y) + len(splits.stream.val) == 3 * 4 + 1 - 2
    assert len(splits.test_y) == 3 * 2 - 1
    with pytest.raises(DataError) as info:  # without skip_bad: the first one, and how many more
        load_splits(DataConfig(name="imagefolder", path=str(folder), image_size=32, workers=0), seed=0)
    assert "zebra" in str(info.value)


def test_the_in_memory_path_checks_the_same(tmp_path):
    """Without data.image_size (same-size images, decoded into arrays) a truncated file is refused too."""
    folder = write_folder(tmp_path / "same", per_class=3, test_per_class=1, sizes=((24, 24),))
    bad = first(folder, ".jpg")
    truncate(bad)
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(name="imagefolder", path=str(folder), workers=0), seed=0)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    splits = load_splits(DataConfig(name="imagefolder", path=str(folder), workers=0, skip_bad=True), seed=0)
    assert splits.stream is None and splits.record["skipped"] == {"train": {"corrupt": 1}}
