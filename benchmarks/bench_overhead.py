"""edgekd bench's p50 vs a bare `session.run` loop on the same model and settings, one model
at a time and interleaved (both models side by side, as `edgekd bench RUN_DIR` times them).

    python benchmarks/bench_overhead.py [--run-dir DIR] [--reps 21] [--runs 3000] [--threads 1]

Each repetition measures both on a fresh session: edgekd through edgekd.bench.bench()
(the code path of `edgekd bench`), and a loop of `perf_counter(); session.run();
perf_counter()` on an InferenceSession made with the same options (all graph
optimizations, the same intra-op threads, the same input: the first eval image,
preprocessed from the model's metadata), with the same warm-up and number of runs. The
order alternates per repetition (AB, BA, ...) so that drift of a shared machine hits both;
the result is the median over repetitions of the per-repetition ratio edgekd p50 / bare
p50. Interleaved: edgekd.bench.bench() on both models with bench.interleave against a bare loop
that rotates the same rounds (ROUND_RUNS runs of each model per round, the order shifting
by one each round) with the same clock reads, per model.
Target: within 3 % (0.97 <= ratio <= 1.03). The models are the default run's model.int8.onnx
and model.fp32.onnx (`edgekd compress --out DIR` makes one; the default DIR is made when
missing). Writes benchmarks/results/bench-overhead.md and .json; exits 1 if the target is
missed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import common
from common import RESULTS, Clock, command, machine_info, machine_line, table, write_results
from edgekd.runtime import bench
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.inputs import load_eval_set, preprocess
from edgekd.runtime.measure import ROUND_RUNS

TOLERANCE = 0.03  # |edgekd p50 / bare p50 - 1|


def bare_session(path: Path, x: np.ndarray, threads: int) -> tuple:
    """(session, feed) with edgekd's options: all graph optimizations, the intra-op threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, {session.get_inputs()[0].name: x}


def bare_p50(path: Path, x: np.ndarray, *, threads: int, warmup: int, runs: int) -> float:
    """p50 in ms of a plain timed loop around session.run, nothing else."""
    session, feed = bare_session(path, x, threads)
    session.run(None, feed)  # the cold run, also out of edgekd's statistics
    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(timings, 50))


def edgekd_p50(path: Path, eval_set: Path, cfg: BenchConfig) -> float:
    (row,) = bench.bench([path], eval_set=eval_set, cfg=cfg, progress=False)
    assert row.runs == cfg.runs and row.input_source == "eval"
    return row.latency_ms["p50"]


def first_image(path: Path, eval_set: Path) -> np.ndarray:
    """What edgekd feeds at batch 1: the first eval image, preprocessed with the model's mean/std."""
    x, _, _ = load_eval_set(eval_set)
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return np.ascontiguousarray(preprocess(x[:1], meta))


def measure(path: Path, eval_set: Path, args) -> dict:
    cfg = BenchConfig(batch_size=1, warmup=args.warmup, runs=args.runs, min_seconds=0.0, threads=args.threads)
    x = first_image(path, eval_set)
    reps = []
    for i in range(args.reps):
        order = ("edgekd", "bare") if i % 2 == 0 else ("bare", "edgekd")
        rep = {}
        for side in order:
            if side == "edgekd":
                rep["edgekd"] = edgekd_p50(path, eval_set, cfg)
            else:
                rep["bare"] = bare_p50(path, x, threads=args.threads, warmup=args.warmup, runs=args.runs)
        rep["ratio"] = rep["edgekd"] / rep["bare"]
        reps.append(rep)
        print(f"{path.name} rep {i + 1}/{args.reps}: edgekd {rep['edgekd']:.4f} ms, bare {rep['bare']:.4f} ms, "
              f"ratio {rep['ratio']:.4f}", flush=True)
    ratio = statistics.median(r["ratio"] for r in reps)
    return {
        "model": path.name,
        "edgekd_p50_ms_median": statistics.median(r["edgekd"] for r in reps),
        "bare_p50_ms_median": statistics.median(r["bare"] for r in reps),
        "ratio_median": ratio,
        "ratio_min": min(r["ratio"] for r in reps),
        "ratio_max": max(r["ratio"] for r in reps),
        "within_target": abs(ratio - 1) <= TOLERANCE,
        "reps": reps,
    }


def bare_interleaved_p50s(paths: list, xs: list, *, threads: int, warmup: int, runs: int) -> list:
    """p50 in ms per model of a plain loop that rotates rounds of ROUND_RUNS runs of each
    model (the order shifting by one per round) until each has `runs` timed runs."""
    sessions = []
    for path, x in zip(paths, xs):
        session, feed = bare_session(path, x, threads)
        for _ in range(1 + warmup):  # the cold run and the warm-up, out of the statistics as in edgekd
            session.run(None, feed)
        sessions.append((session, feed))
    timings = [[] for _ in sessions]
    rounds = 0
    while min(len(t) for t in timings) < runs:
        shift = rounds % len(sessions)
        for k in [*range(shift, len(sessions)), *range(shift)]:
            (session, feed), append = sessions[k], timings[k].append
            for _ in range(ROUND_RUNS):
                start = time.perf_counter()
                session.run(None, feed)
                append((time.perf_counter() - start) * 1000.0)
        rounds += 1
    return [float(np.percentile(t, 50)) for t in timings]


def measure_interleaved(paths: list, eval_set: Path, args) -> list:
    """edgekd's interleaved p50 per model vs the bare rotating loop's, `reps` times, in
    alternating order; one summary per model, as measure() gives."""
    cfg = BenchConfig(batch_size=1, warmup=args.warmup, runs=args.runs, min_seconds=0.0, threads=args.threads,
                      interleave=True)
    xs = [first_image(p, eval_set) for p in paths]
    reps = []
    for i in range(args.reps):
        rep = {}
        for side in (("edgekd", "bare") if i % 2 == 0 else ("bare", "edgekd")):
            if side == "edgekd":
                rows = bench.bench(paths, eval_set=eval_set, cfg=cfg, progress=False)
                assert all("timed interleaved" in " ".join(r.notes) for r in rows)
                rep["edgekd"] = [r.latency_ms["p50"] for r in rows]
            else:
                rep["bare"] = bare_interleaved_p50s(paths, xs, threads=args.threads, warmup=args.warmup,
                                                    runs=args.runs)
        rep["ratio"] = [e / b for e, b in zip(rep["edgekd"], rep["bare"])]
        reps.append(rep)
        print(f"interleaved rep {i + 1}/{args.reps}: ratios "
              + ", ".join(f"{p.name} {r:.4f}" for p, r in zip(paths, rep["ratio"])), flush=True)
    out = []
    for k, path in enumerate(paths):
        ratio = statistics.median(r["ratio"][k] for r in reps)
        out.append({
            "model": f"{path.name} (interleaved)",
            "edgekd_p50_ms_median": statistics.median(r["edgekd"][k] for r in reps),
            "bare_p50_ms_median": statistics.median(r["bare"][k] for r in reps),
            "ratio_median": ratio,
            "ratio_min": min(r["ratio"][k] for r in reps),
            "ratio_max": max(r["ratio"][k] for r in reps),
            "within_target": abs(ratio - 1) <= TOLERANCE,
            "reps": [{"edgekd": r["edgekd"][k], "bare": r["bare"][k], "ratio": r["ratio"][k]} for r in reps],
        })
    return out


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# edgekd bench overhead vs a bare session.run loop",
        "",
        f"Command: `{result['command']}` (wall time {result['wall_seconds']:.0f} s).",
        machine_line(m, "os", "python", "onnxruntime") + ". "
        f"Load average (1 min) {result['load_average'][0]:.1f} at the start and {result['load_average'][1]:.1f} at "
        "the end: other jobs shared the CPU; the interleaved order and the per-repetition ratio are there to "
        "cancel that drift.",
        f"Settings on both sides: CPU provider, batch 1, intra-op threads {s['threads']}, {s['warmup']} warm-up "
        f"runs after the cold run, {s['runs']} timed runs, a fresh session per repetition, {s['reps']} repetitions "
        "in alternating order; input: the first eval image of the run's eval.npz. Interleaved rows: both "
        f"models timed side by side in rounds of {ROUND_RUNS} runs each (edgekd with bench.interleave; the bare "
        "loop rotating the same rounds), one session per model and repetition.",
        "",
        f"Target: edgekd's p50 within {100 * TOLERANCE:.0f} % of the bare loop's "
        f"(median ratio between {1 - TOLERANCE:.2f} and {1 + TOLERANCE:.2f}).",
        "",
        *table(["model", "edgekd p50 ms (median)", "bare p50 ms (median)", "ratio edgekd/bare (median)", "min", "max",
                "target"], "lrrrrrl",
               [[r["model"], *(f"{r[k]:.4f}" for k in ("edgekd_p50_ms_median", "bare_p50_ms_median", "ratio_median",
                                                       "ratio_min", "ratio_max")),
                 "met" if r["within_target"] else "MISSED"] for r in result["models"]]),
        "",
        "Per-repetition values are in bench-overhead.json.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--run-dir", default="runs/bench-overhead",
                        help="a default run (made with `edgekd compress --out` when it has no model.int8.onnx)")
    common.add_numbers(parser, reps=21, runs=3000, warmup=50)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on both sides (0: ORT default)")
    args = parser.parse_args()
    clock = Clock()
    run_dir = Path(args.run_dir)
    if not (run_dir / "model.int8.onnx").is_file():
        subprocess.run([sys.executable, "-m", "edgekd", "compress", "--out", str(run_dir), "--force", "--no-progress"],
                       check=True)
    eval_set = run_dir / "eval.npz"
    names = ("model.int8.onnx", "model.fp32.onnx")
    models = [measure(run_dir / name, eval_set, args) for name in names]
    models += measure_interleaved([run_dir / name for name in names], eval_set, args)
    result = {
        "command": command(),
        "wall_seconds": clock.seconds(),
        "machine": machine_info(),
        "load_average": clock.load_average(),
        "settings": {"reps": args.reps, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                     "batch_size": 1, "provider": "cpu"},
        "tolerance": TOLERANCE,
        "models": models,
    }
    write_results(RESULTS, "bench-overhead", result, markdown(result))
    print(markdown(result))
    return 0 if all(m["within_target"] for m in models) else 1


if __name__ == "__main__":
    sys.exit(main())
