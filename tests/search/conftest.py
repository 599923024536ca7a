"""Tiny candidates of the student search: three edgenet students of 1x8x8 images, a TinyCNN
teacher, exported once per session into a candidates folder as compress writes it."""

import pytest
from search_kit import OPSET, TINY_SPACE


@pytest.fixture(scope="session")
def candidates_folder(tmp_path_factory):
    """(folder, manifest, teacher, spec, calib): TINY_SPACE exported with the teacher as reference."""
    import numpy as np
    import torch

    from edgekd.data.splits import DataSpec
    from edgekd.models.zoo import build_model
    from edgekd.search.select import CandidateBuild, export_candidates

    spec = DataSpec(name="tiny", channels=1, height=8, width=8, num_classes=3, class_names=("ant", "bee", "cat"),
                    mean=(0.5,), std=(0.25,), source="tests")
    torch.manual_seed(0)
    teacher = build_model("tinycnn", in_channels=1, num_classes=3, width=4).eval()
    calib = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    folder = tmp_path_factory.mktemp("candidates")
    manifest = export_candidates(TINY_SPACE, teacher, folder, CandidateBuild(spec, calib, OPSET))
    return folder, manifest, teacher, spec, calib
