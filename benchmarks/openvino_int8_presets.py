"""Which QDQ int8 format runs as int8, and fastest, on the OpenVINO execution provider?

    python benchmarks/openvino_int8_presets.py [--run-dir DIR] [--runs 400] [--min-seconds 0] [--threads 1]

Quantizes the default run's student and teacher (model.fp32.onnx, teacher.fp32.onnx; `edgekd
compress --out DIR` makes them) in every QDQ activation/weight combination (U8U8, U8S8, S8S8;
per-channel or per-tensor weights; and the x86-vnni preset, U8S8 with the first convolution's
input padded to 4 channels), calibrated on 256 training images with edgekd's own PTQ, then
benches every model on the CPU and OpenVINO providers side by side in one interleaved run
(edgekd.runtime.bench with providers=[cpu, openvino]: top-1 on the run's eval.npz, p50, node
placement). A model a provider refuses is a failed result with its message. Both providers
run on `--threads` threads (OpenVINO's num_of_threads): on a shared machine a multi-threaded
inference waits for its threads to be scheduled, which swamps differences of microseconds.

Runs as int8: on the CPU provider, the int8 kernels in the graph ORT runs (QLinearConv, ...);
on OpenVINO, which compiles the whole graph into one node, the speed against its own fp32
model and, where the `openvino` Python package is importable, the runtime precision of the
convolutions and matmuls in the graph OpenVINO's CPU plugin compiles from the same file.

Needs a route to OpenVINO: the onnxruntime-ep-openvino plugin (Intel hardware) or
onnxruntime-openvino in place of onnxruntime. Writes benchmarks/results/openvino-int8-presets.{md,json}.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

import onnxruntime as ort

import common
from common import RESULTS, Clock, command, machine_info, machine_line, table, write_results
from edgekd.data.splits import load_arrays
from edgekd.quant.config import QuantConfig
from edgekd.quant.ptq import ptq
from edgekd.runtime.bench import Sweep, bench
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.inputs import preprocess
from edgekd.runtime.session import provider_route

# name -> QuantConfig fields (target x86-vnni only supplies the fields not set here)
VARIANTS = {
    "U8U8 per-tensor": {"activation_type": "uint8", "weight_type": "uint8", "per_channel": False},
    "U8U8 per-channel": {"activation_type": "uint8", "weight_type": "uint8", "per_channel": True},
    "U8S8 per-tensor": {"activation_type": "uint8", "weight_type": "int8", "per_channel": False},
    "U8S8 per-channel": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True},
    "S8S8 per-tensor": {"activation_type": "int8", "weight_type": "int8", "per_channel": False},
    "S8S8 per-channel": {"activation_type": "int8", "weight_type": "int8", "per_channel": True},
}
PAD = {"pad_input_channels_to": 0, "reduce_range": False}  # the plain formats; the preset below pads
PRESET_VARIANT = "x86-vnni preset (U8S8 per-channel, pad 4)"
ACCURACY_TOLERANCE = 0.5  # top-1 points below OpenVINO's own fp32 model


def openvino_precisions(path: Path) -> dict | None:
    """'Convolution u8' -> count: the runtime precision of the compute layers in the graph
    OpenVINO's CPU plugin compiles from `path`; None without the openvino package."""
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(str(path), "CPU")
    counts = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else "?"
        if layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution"):
            counts[f"{layer} {info['runtimePrecision'].astype(str)}"] += 1
    return dict(counts)


def quantize_all(run_dir: Path, out: Path, calib_x) -> dict:
    """stage -> {variant: path} (fp32 included)."""
    models = {}
    for stage, name in (("student", "model.fp32.onnx"), ("teacher", "teacher.fp32.onnx")):
        fp32 = run_dir / name
        meta = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        calib = preprocess(calib_x, meta)
        models[stage] = {"fp32": fp32}
        for variant, fields in [*VARIANTS.items(), (PRESET_VARIANT, {})]:
            cfg = QuantConfig(target="x86-vnni", **({**fields, **PAD} if fields else {}))
            path = out / f"{stage}.{variant.split(' (')[0].replace(' ', '_')}.onnx"
            ptq(fp32, path, calib_images=calib, cfg=cfg, progress=False)
            models[stage][variant] = path
    return models


def summarize(models: dict, rows: list) -> list:
    """One entry per (stage, variant): CPU and OpenVINO results side by side."""
    by_key = {(Path(r.path), r.provider): r for r in rows if hasattr(r, "latency_ms")}
    failed = {(Path(r.path), r.provider): r.message for r in rows if not hasattr(r, "latency_ms")}
    out = []
    for stage, variants in models.items():
        fp32 = {p: by_key.get((variants["fp32"], p)) for p in ("cpu", "openvino")}
        for variant, path in variants.items():
            entry = {"stage": stage, "variant": variant, "file_kb": round(path.stat().st_size / 1024, 1)}
            for provider in ("cpu", "openvino"):
                row = by_key.get((path, provider))
                if row is None:
                    entry[provider] = {"failed": failed.get((path, provider), "not run")}
                    continue
                base = fp32[provider]
                entry[provider] = {
                    "p50_ms": row.latency_ms["p50"], "top1": row.top1,
                    "speedup_vs_fp32": None if base is None else base.latency_ms["p50"] / row.latency_ms["p50"],
                    "int8_kernels": row.int8_ops, "provider_nodes": row.provider_nodes,
                    "fallback_nodes": row.fallback_nodes, "low_confidence": row.low_confidence,
                }
            entry["openvino_precisions"] = openvino_precisions(path)
            out.append(entry)
    return out


def runs_int8_on_openvino(entry: dict) -> bool | None:
    """Every compute layer OpenVINO compiles is u8/i8 (None without the openvino package)."""
    precisions = entry["openvino_precisions"]
    if precisions is None:
        return None
    return bool(precisions) and all(k.endswith((" u8", " i8")) for k in precisions)


def choose(entries: list) -> dict:
    """The OpenVINO preset: among the int8 variants that OpenVINO runs (no failure, int8
    layers where that can be checked, top-1 within ACCURACY_TOLERANCE of its fp32), the one
    with the best geometric-mean speed-up over fp32 across the models."""
    scores = {}
    for variant in [*VARIANTS, PRESET_VARIANT]:
        mine = [e for e in entries if e["variant"] == variant]
        fp32 = {e["stage"]: e["openvino"] for e in entries if e["variant"] == "fp32"}
        ok = all("failed" not in e["openvino"] and runs_int8_on_openvino(e) is not False
                 and e["openvino"]["top1"] is not None and fp32[e["stage"]].get("top1") is not None
                 and e["openvino"]["top1"] >= fp32[e["stage"]]["top1"] - ACCURACY_TOLERANCE for e in mine)
        if ok:
            scores[variant] = math.exp(sum(math.log(e["openvino"]["speedup_vs_fp32"]) for e in mine) / len(mine))
    best = max(scores, key=scores.get) if scores else None
    return {"variant": best, "fields": VARIANTS.get(best), "geomean_speedups": scores,
            "rule": f"runs on OpenVINO, int8 layers, top-1 within {ACCURACY_TOLERANCE} points of OpenVINO's fp32, "
                    "then the best geometric-mean speed-up over fp32"}


def _cell(result: dict, key: str, fmt: str) -> str:
    value = result.get(key)
    return "-" if value is None else format(value, fmt)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# int8 QDQ formats on the OpenVINO execution provider",
        "",
        f"Command: `{result['command']}` (wall time {result['wall_seconds']:.0f} s).",
        (machine_line(m, "int8", "onnxruntime") + f". OpenVINO route: {result['openvino_route']['kind']} "
        f"({result['openvino_route']['package']}). Load average (1 min) {result['load_average'][0]:.1f} at the "
        f"start, {result['load_average'][1]:.1f} at the end: other work shared the machine; every model ran "
        "interleaved with the others in one run, so the ratios hold better than the absolute times."),
        (f"Models: the default run's student and teacher, quantized with edgekd's PTQ (minmax, 256 training "
        f"images); top-1 on the run's eval.npz ({result['samples']} images); batch 1, "
        f"{result['settings']['threads']} thread(s) on both providers, {result['settings']['runs']}+ timed runs "
        "per result. OpenVINO compiled layers: the runtime precision OpenVINO's CPU plugin (the `openvino` "
        "package) gives the convolutions and matmuls of the same file (bf16: its default on CPUs with "
        "AVX-512 BF16; f32/bf16 in an int8 model: that layer is not run in int8)."),
        "",
    ]
    cells = []
    for e in result["results"]:
        row = [e["stage"], e["variant"], e["file_kb"]]
        for provider in ("cpu", "openvino"):
            r = e[provider]
            if "failed" in r:
                row += [f"failed: {r['failed'][:80]}", *["-"] * (3 if provider == "cpu" else 2)]
                continue
            row += [f"{r['p50_ms']:.4f}", _cell(r, "speedup_vs_fp32", ".2f")]
            if provider == "cpu":
                row.append(_cell(r, "int8_kernels", "d"))
            row.append(_cell(r, "top1", ".2f"))
        precisions = e["openvino_precisions"]
        row.append("-" if precisions is None else ", ".join(f"{k} x{n}" for k, n in sorted(precisions.items())))
        cells.append(row)
    lines += table(["model", "format", "KB", "CPU p50 ms", "CPU x fp32", "CPU int8 kernels", "CPU top-1",
                    "OpenVINO p50 ms", "OpenVINO x fp32", "OpenVINO top-1", "OpenVINO compiled layers"],
                   "llrrrrrrrrl", cells)
    choice = result["choice"]
    lines += ["", f"Rule: {choice['rule']}.", ""]
    lines += [f"- {v}: geometric-mean OpenVINO speed-up {s:.2f}x" for v, s in choice["geomean_speedups"].items()]
    lines += ["", f"Chosen for quantize.target openvino: **{choice['variant']}** {choice['fields']}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--run-dir", default="runs/openvino-presets", help="a default run (edgekd compress --out DIR)")
    # 32 results interleaved: a time floor per result would be set by the fastest one (rounds of 20 runs)
    common.add_numbers(parser, runs=400, min_seconds=0.0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both providers (0: their default)")
    args = parser.parse_args()
    clock = Clock()
    run_dir = Path(args.run_dir)
    route = provider_route("openvino")  # ProviderUnavailable (no OpenVINO here) ends it at once
    train_x = load_arrays("fashion-mnist-subset")[0]
    calib_x = train_x[:256]
    with tempfile.TemporaryDirectory(prefix="edgekd-ov-presets-") as tmp:
        models = quantize_all(run_dir, Path(tmp), calib_x)
        print(f"quantized in {clock.seconds():.0f} s; benching", flush=True)
        paths = [p for variants in models.values() for p in variants.values()]
        openvino_threads = {"openvino:num_of_threads": str(args.threads)} if args.threads else {}
        cfg = BenchConfig(runs=args.runs, min_seconds=args.min_seconds, warmup=20, interleave=True,
                          threads=args.threads, provider_options=openvino_threads)
        rows = bench(paths, eval_set=run_dir / "eval.npz", cfg=cfg, progress=False,
                     sweep=Sweep(providers=["cpu", "openvino"]), keep_failures=True)
        print(f"benched in {clock.seconds():.0f} s; OpenVINO's compiled precisions", flush=True)
        entries = summarize(models, rows)
    samples = next((r.samples for r in rows if hasattr(r, "samples")), 0)
    result = {
        "command": command(),
        "wall_seconds": clock.seconds(),
        "machine": machine_info(),
        "load_average": clock.load_average(),
        "openvino_route": route,
        "settings": {"runs": args.runs, "min_seconds": args.min_seconds, "batch_size": 1, "interleave": True,
                     "threads": args.threads},
        "samples": samples,
        "results": entries,
        "choice": choose(entries),
    }
    write_results(RESULTS, "openvino-int8-presets", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
