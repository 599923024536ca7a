"""Issue 28's own-data path, end to end: `edgekd compress --data FOLDER` on a folder of
`<class>/` folders of 64x64 PNGs (no train/ and test/) with data.image_size 224 runs to the
end: the folder is split (stratified, recorded), the small images are resized up (counted),
and the run trains, quantizes, exports and benches at 224x224."""

from __future__ import annotations

import json

from clitools import TINY_RECIPE, cli
from ownfolder import write_class_folders


def test_compress_a_class_folder_of_small_images_at_224(tmp_path):
    folder = tmp_path / "photos"
    classes = write_class_folders(folder, classes=3, per_class=40, size=64)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.format(data="fashion-mnist-subset"))
    out = tmp_path / "run"
    result = cli("compress", recipe, "--data", folder, "--out", out, "--no-progress",
                 "--set", "data.image_size=224", "--set", "data.workers=0", "--set", "data.eval_size=16",
                 "--set", "data.calib_size=8", "--set", "teacher.batch_size=16", "--set", "distill.batch_size=16",
                 "--set", "export.check_batch_sizes=[1, 2]")
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads((out / "report.json").read_text())
    data = report["stages"]["data"]
    assert data["shape"] == [3, 224, 224]
    assert data["split"] == {"from": "class folders", "test_fraction": 0.2, "seed": 0, "train": 96, "test": 24}
    assert data["upscaled_images"] == 120  # every 64x64 image, resized up rather than refused
    assert data["classes"] == len(classes)
    assert (out / "model.int8.onnx").is_file()
    assert "resized up" in result.output and "held out as the test split" in result.output
