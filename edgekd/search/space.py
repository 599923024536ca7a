"""The search space: edgenet candidates (edgekd.models.family) as plain data, and the id
that ties a candidate's timing to exactly what was timed. Torch-free: the device reads it."""

from __future__ import annotations

import hashlib
import json

from edgekd.models.family_blocks import FAMILY
from edgekd.search.config import DEFAULT_BLOCKS, ONE_CONV_BLOCKS

BASE_WIDTHS = (16, 32)  # first stage's channels; the later stages have 2x and 4x
BASE_DEPTHS = (1, 2)  # blocks per stage
STEM_STRIDES = (1, 2)
# Wide and shallow: two stages after an early downsampling, where the int8 kernels gain most
# over fp32 (the gain grows with width; benchmarks/results/student-space-int8.md)
WIDE_WIDTHS = (32, 48, 64)
MAX_LEVEL = 2  # widenings of the space when every candidate is far below the budget


def candidate_id(arch: str, arch_args: dict, input_shape, opset: int) -> str:
    """A digest of what decides the model that is timed: a latency measured for one id is
    never read for another architecture, argument, input shape or opset."""
    key = {"arch": arch, "arch_args": arch_args, "input_shape": [int(v) for v in input_shape], "opset": int(opset)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def family_space(level: int = 0, blocks=DEFAULT_BLOCKS) -> list[dict]:
    """Candidates {arch, arch_args} of the edgenet family, from small to large. Each level
    doubles the widths and adds a block per stage (the space widened when every candidate
    meets the budget by far), without the candidates of the levels below."""
    below = {json.dumps(c, sort_keys=True) for k in range(level) for c in family_space(k, blocks)}
    candidates = []
    for depth in BASE_DEPTHS:
        for width in BASE_WIDTHS:
            w, d = width * 2**level, depth + level
            stages = [[d, w, 1], [d, 2 * w, 2], [d, 4 * w, 2]]
            for stride in STEM_STRIDES:
                for block in (b for b in blocks if b not in ONE_CONV_BLOCKS):  # those: wide, shallow ones below
                    if block == "inverted" and (depth, width) != (BASE_DEPTHS[0], BASE_WIDTHS[0]):
                        continue  # a few inverted ones: their speed depends most on the target
                    args = {"stem": w, "stem_stride": stride, "stages": stages, "block": block}
                    if block == "inverted":
                        args["expand"] = 4
                    candidates.append({"arch": FAMILY, "arch_args": args})
    for width in WIDE_WIDTHS if "basic" in blocks else ():
        w, d = width * 2**level, 1 + level
        # downsampled by the stem (of the stage's width), or by the first stage after a narrow full-size stem
        candidates.append({"arch": FAMILY, "arch_args": {"stem": w, "stem_stride": 2, "stages": [[d, w, 1], [d, 2 * w, 2]],
                                                         "block": "basic"}})
        candidates.append({"arch": FAMILY, "arch_args": {"stem": 16, "stem_stride": 1,
                                                         "stages": [[d, w, 2], [d, 2 * w, 2]], "block": "basic"}})
    for block in (b for b in ONE_CONV_BLOCKS if b in blocks):
        for width in WIDE_WIDTHS:
            w, d = width * 2**level, 1 + level
            # one convolution per block after a stride-2 stem (rep: trained with branches, fused on export):
            # the int8 model has no Add and no 1x1 shortcut between its convolutions, the most int8 gain
            # over fp32 at a given latency
            for stages in ([[2 * d, w, 1], [2 * d, 2 * w, 2]], [[d, w, 1], [d, 2 * w, 2], [d, 4 * w, 2]],
                           [[d, 2 * w, 2], [2 * d, 4 * w, 2]]):
                candidates.append({"arch": FAMILY, "arch_args": {"stem": w, "stem_stride": 2, "stages": stages,
                                                                 "block": block}})
    return [c for c in candidates if json.dumps(c, sort_keys=True) not in below]


BUDGET_KEY = "budget"  # marks the manifest entry of distill.search.as_fast_as's model


def budget_model(arch: str) -> dict:
    """distill.search.as_fast_as's architecture as a manifest entry: timed like a candidate, never chosen."""
    return {"arch": arch, "arch_args": {}, BUDGET_KEY: True}


def is_budget_model(entry: dict) -> bool:
    return bool(entry.get(BUDGET_KEY))


def count_in_words(entries: list[dict]) -> str:
    """'16 candidates', or '16 candidates and the budget model (resnet8)' where as_fast_as added one."""
    budget = [e["arch"] for e in entries if is_budget_model(e)]
    words = f"{len(entries) - len(budget)} candidates"
    return words + (f" and the budget model ({', '.join(budget)})" if budget else "")


def describe(candidate: dict) -> str:
    """A short name for logs and tables, every number that tells candidates apart:
    `edgenet basic stem16 16x1-32x1/2-64x1/2` is a 16-channel stem (`stem48/2`: of stride 2),
    then stages of width x depth, `/2` where a stage starts with stride 2."""
    args = candidate.get("arch_args") or {}
    if candidate.get("arch") != FAMILY or "stages" not in args:
        return f"{candidate.get('arch')} {json.dumps(args, sort_keys=True)}" if args else str(candidate.get("arch"))
    stages = "-".join(f"{w}x{d}" + ("/2" if stride == 2 else "") for d, w, stride in args["stages"])
    stem = f"stem{args.get('stem', 16)}" + ("/2" if args.get("stem_stride", 1) == 2 else "")
    block = args.get("block", "basic") + (f" e{args['expand']}" if args.get("block") == "inverted" else "")
    return f"{FAMILY} {block} {stem} {stages}"
