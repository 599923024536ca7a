"""What the student-search tests share: tiny edgenet candidates of 1x8x8 images, and latency
tables made by hand as a device would write them."""

# small to large: params grow down the list
TINY_SPACE = [
    {"arch": "edgenet", "arch_args": {"stem": 16, "stem_stride": 2, "stages": [[1, 16, 1]], "block": "basic"}},
    {"arch": "edgenet", "arch_args": {"stem": 16, "stem_stride": 1, "stages": [[1, 16, 1], [1, 32, 2]],
                                      "block": "basic"}},
    {"arch": "edgenet", "arch_args": {"stem": 16, "stem_stride": 1, "stages": [[1, 32, 1], [1, 64, 2]],
                                      "block": "basic"}},
]
OPSET = 17


def hand_table(manifest, p50s, *, opset=OPSET, input_shape=None, reference_ms=1.0, fp32s=None):
    """A latency table of the manifest's candidates with the given int8 p50s (ms), and their fp32
    models' p50s where `fp32s` gives them, as a device would write it."""
    from edgekd.search.table import SCHEMA

    shape = input_shape or manifest["input_shape"]
    fp32s = fp32s or [None] * len(p50s)
    rows = [{"id": e["id"], "arch": e["arch"], "arch_args": e["arch_args"], "int8_p50_ms": p, "int8_p90_ms": p * 1.1,
             "reference_p50_ms": reference_ms, "fp32_p50_ms": f}
            for e, p, f in zip(manifest["candidates"], p50s, fp32s)]
    return {"schema": SCHEMA, "opset": opset, "input_shape": list(shape), "in_channels": shape[0],
            "input_size": list(shape[1:]), "provider": "cpu", "threads": 1, "batch": 1, "machine": {"cpu": "hand"},
            "candidates": rows}
