"""A student whose fused kernels post-training int8 quantizes badly (edgenet rep_ac) with
quantize.method ptq: the run warns when it starts, before any training, naming the setting to
change; QAT, other blocks and the default recipe get no warning."""

from __future__ import annotations

import pytest

from edgekd.pipeline.preflight import advice
from edgekd.recipe import Recipe

REP_AC = {"arch": "edgenet", "arch_args": {"stem": 16, "stages": [[1, 16, 1]], "block": "rep_ac"}}


@pytest.mark.parametrize("distill, quantize, warned", [
    (REP_AC, {"method": "ptq"}, "the student's block rep_ac"),
    ({"arch": "auto", "search": {"speedup": 2.0, "blocks": ["basic", "rep_ac"]}}, {},
     "distill.search.blocks names rep_ac"),
    (REP_AC, {"method": "qat"}, None),
    (REP_AC, {"enabled": False}, None),
    ({**REP_AC, "arch_args": {**REP_AC["arch_args"], "block": "rep"}}, {}, None),  # rep loses 0.1-0.2: no warning
    ({"arch": "auto", "search": {"speedup": 2.0}}, {}, None),  # the default blocks
    ({}, {}, None),
])
def test_warned_before_training_with_the_setting_to_change(distill, quantize, warned):
    notes = advice(Recipe.from_dict({"distill": distill, "quantize": quantize}))
    if warned is None:
        assert notes == []
    else:
        assert len(notes) == 1 and warned in notes[0] and "set quantize.method: qat" in notes[0]
