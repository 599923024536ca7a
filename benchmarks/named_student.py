"""Issue 27, one student by name: an edgenet student the search may not choose, distilled with the
headline schedule on 3 seeds, against the ResNet-8 headline runs of student_search.py.

    python benchmarks/named_student.py --teacher T --work W --baseline-work W27 --tag rep \\
        --arch-args '{"stem": 48, "stem_stride": 2, "block": "rep", "stages": [[2, 48, 1], [2, 96, 2]]}'

Per seed (each run skipped when its report is already in --work, so an interrupted run goes on):
the headline recipe with `distill.arch: edgenet` and these arguments (same teacher, same schedule),
--jobs at a time with compute.threads = 2 // jobs. The ResNet-8 runs are read from --baseline-work
(student_search.py's `resnet8-sN`). With --qat-work, both students' int8 models are also made by
QAT (quantize.method: qat, the recipe's QAT defaults) in a copy of each run there (QAT-DIR/NAME-sN,
the quantize, bench and report stages run again; reused when done). Then every int8 model and the
named student's fp32 models are timed in one interleaved `edgekd bench` (1 thread, batch 1),
--repetitions times, nothing else running. Writes benchmarks/results/student-named-TAG.{json,md}.
"""

from __future__ import annotations

import json
import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
from common import RESULTS, Clock, command, interleaved_p50s, machine_info, machine_line, table, write_results
from edgekd.search.space import describe
from student_search import BEATS_BY, BUDGET_ARCH, INT8_GAIN, compress, edgekd, mean_std, run_report

QAT = "qat"  # the key of the QAT-made int8 results in a run's entry


def requantized_by_qat(run_dir: Path, qat_dir: Path) -> Path:
    """A copy of the finished run `run_dir` whose int8 model is made again by QAT: the stages after
    export marked not done (state/progress.json), then `compress --resume` with quantize.method=qat
    (training threads as the run had them). Reused when its report is there."""
    if (qat_dir / "report.json").is_file():
        return qat_dir
    if qat_dir.exists():
        shutil.rmtree(qat_dir)
    shutil.copytree(run_dir, qat_dir)
    for name in ("report.json", "report.md", "results.csv", "model.int8.onnx"):  # the PTQ run's, made again
        (qat_dir / name).unlink(missing_ok=True)
    progress = qat_dir / "state" / "progress.json"
    state = json.loads(progress.read_text())
    for stage in ("quantize", "bench", "report"):
        state["done"].pop(stage, None)
    progress.write_text(json.dumps(state))
    edgekd("compress", "--resume", str(qat_dir), "--no-progress", "--set", "quantize.method=qat",
           log=qat_dir.with_suffix(".log"))
    return qat_dir


def qat_markdown(out: dict) -> list[str]:
    """The QAT table and summary (with --qat-work)."""
    runs, seeds, s, tag = out["runs"], out["seeds"], out["summary"], out["tag"]
    if QAT not in s:
        return []
    rows = []
    for seed in seeds:
        b, n = runs[f"{BUDGET_ARCH}-s{seed}"][QAT], runs[f"{tag}-s{seed}"][QAT]
        rows.append([str(seed), f"{b['int8_top1']:.2f}", f"{n['int8_top1']:.2f}", f"{n['int8_top1'] - b['int8_top1']:+.2f}",
                     f"{b['int8_p50_ms']:.4f}", f"{n['int8_p50_ms']:.4f}", f"{n['int8_p50_ms'] / b['int8_p50_ms']:.2f}x",
                     f"{n['int8_gain']:.2f}x"])
    q = s[QAT]
    return ["", f"Both students' int8 models made by QAT instead (`quantize.method: qat`, 2 epochs of KD with fake "
                f"quantization, the recipe's defaults; copies of the runs in `{out['qat_work']}`):", "",
            *table(["seed", "ResNet-8 QAT int8 top-1 %", "QAT int8 top-1 %", "gain (int8)", "ResNet-8 QAT int8 p50 ms",
                    "QAT int8 p50 ms", "latency vs ResNet-8", "QAT int8 over its fp32"], "lrrrrrrr", rows), "",
            f"Mean QAT int8 top-1: ResNet-8 {mean_std(runs[f'{BUDGET_ARCH}-s{x}'][QAT]['int8_top1'] for x in seeds)}, "
            f"this student {mean_std(runs[f'{tag}-s{x}'][QAT]['int8_top1'] for x in seeds)}; mean gain "
            f"**{q['int8_top1_gain_mean']:+.2f} points** (target >= +{BEATS_BY}: **{'met' if q['beats'] else 'not met'}**). "
            f"int8 over its own fp32: {', '.join(f'{g:.2f}x' for g in q['int8_gain'])} (target >= {INT8_GAIN}x: "
            f"**{'met' if q['int8_gain_met'] else 'not met'}**)."]


def markdown(out: dict) -> str:
    runs, seeds, s, tag = out["runs"], out["seeds"], out["summary"], out["tag"]
    rows = []
    for seed in seeds:
        b, n = runs[f"{BUDGET_ARCH}-s{seed}"], runs[f"{tag}-s{seed}"]
        rows.append([str(seed), f"{b['int8_top1']:.2f}", f"{n['fp32_top1']:.2f}", f"{n['int8_top1']:.2f}",
                     f"{n['int8_top1'] - b['int8_top1']:+.2f}", f"{b['int8_p50_ms']:.4f}", f"{n['int8_p50_ms']:.4f}",
                     f"{n['int8_p50_ms'] / b['int8_p50_ms']:.2f}x", f"{n['int8_gain']:.2f}x"])
    first = runs[f"{tag}-s{seeds[0]}"]
    return "\n".join([
        f"# One student by name against ResNet-8 (issue 27): {first['name']}", "",
        f"Command: `{out['command']}`. " + machine_line(out["machine"], "int8", "onnxruntime") + ".", "",
        f"The headline recipe with `distill.arch: edgenet`, `distill.arch_args: {json.dumps(out['arch_args'])}` "
        f"({first['params']:,} parameters), the same ResNet-20 teacher "
        f"(`{out['teacher']}`) and 30-epoch schedule as the ResNet-8 runs of `student-search.md`, read from "
        f"`{out['baseline_work']}`.", "",
        *table(["seed", "ResNet-8 int8 top-1 %", "fp32 top-1 %", "int8 top-1 %", "gain (int8)", "ResNet-8 int8 p50 ms",
                "int8 p50 ms", "latency vs ResNet-8", "int8 over its fp32"], "lrrrrrrrr", rows), "",
        f"Mean int8 top-1: ResNet-8 {mean_std(runs[f'{BUDGET_ARCH}-s{x}']['int8_top1'] for x in seeds)}, this student "
        f"{mean_std(runs[f'{tag}-s{x}']['int8_top1'] for x in seeds)}; mean gain **{s['int8_top1_gain_mean']:+.2f} "
        f"points** (issue 27's target >= +{BEATS_BY}: **{'met' if s['beats'] else 'not met'}**). int8 over its own "
        f"fp32: {', '.join(f'{g:.2f}x' for g in s['int8_gain'])} (target >= {INT8_GAIN}x: "
        f"**{'met' if s['int8_gain_met'] else 'not met'}**).", "",
        f"Latency: every model's p50 is the median of {out['repetitions']} interleaved `edgekd bench` calls "
        f"({out['bench_runs']} runs each after 50 warm-up runs, 1 thread, batch 1, nothing else running). "
        f"Load average {out['load_average'][0]:.2f} at the start, {out['load_average'][1]:.2f} at the end. "
        f"Runs: {out['jobs']} at a time with {max(1, 2 // out['jobs'])} training thread(s) each.",
        *qat_markdown(out),
    ])


def summary(runs: dict, tag: str, seeds: list[int]) -> dict:
    """The mean int8 top-1 gain over ResNet-8 and the named student's int8 speed-ups over its fp32."""
    named = [runs[f"{tag}-s{s}"] for s in seeds]
    gain = statistics.mean(n["int8_top1"] - runs[f"{BUDGET_ARCH}-s{s}"]["int8_top1"] for n, s in zip(named, seeds))
    return {"int8_top1_gain_mean": gain, "beats": gain >= BEATS_BY, "int8_gain": [n["int8_gain"] for n in named],
            "int8_gain_met": all(n["int8_gain"] >= INT8_GAIN for n in named)}


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--teacher", type=Path, required=True, help="a trained headline ResNet-20 (safetensors)")
    parser.add_argument("--work", type=Path, required=True, help="folder of this student's runs (reused when rerun)")
    parser.add_argument("--baseline-work", type=Path, required=True,
                        help="student_search.py's --work, with its resnet8-sN runs")
    parser.add_argument("--tag", required=True, help="names the runs (TAG-sN) and the results file")
    parser.add_argument("--arch-args", type=json.loads, required=True, help="the edgenet arguments, as JSON")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--qat-work", type=Path, help="also make both students' int8 models by QAT, in copies here")
    common.add_numbers(parser, runs=300, repetitions=3)
    args = parser.parse_args()
    clock = Clock()
    args.work.mkdir(parents=True, exist_ok=True)
    sets = ["--set", "distill.arch=edgenet", "--set", f"distill.arch_args={json.dumps(args.arch_args)}"]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda seed: compress(args.work / f"{args.tag}-s{seed}", args.teacher.resolve(), seed, sets,
                                            max(1, 2 // args.jobs)), args.seeds))
    named_as = {"arch": "edgenet", "arch_args": args.arch_args}  # a named run's report records the arch only
    runs = {f"{args.tag}-s{s}": {**run_report(args.work / f"{args.tag}-s{s}"), **named_as, "name": describe(named_as)}
            for s in args.seeds}
    runs.update({f"{BUDGET_ARCH}-s{s}": run_report(args.baseline_work / f"{BUDGET_ARCH}-s{s}") for s in args.seeds})
    if args.qat_work is not None:
        args.qat_work.mkdir(parents=True, exist_ok=True)
        for name, r in runs.items():
            qat = run_report(requantized_by_qat(Path(r["dir"]), args.qat_work / name))
            r[QAT] = {"dir": qat["dir"], "int8_top1": qat["int8_top1"], "int8": qat["int8"]}
    paths = [r["int8"] for r in runs.values()] + [r[QAT]["int8"] for r in runs.values() if QAT in r]
    paths += [r["fp32"] for n, r in runs.items() if n.startswith(args.tag)]
    p50 = {str(p): v for p, v in interleaved_p50s([Path(p) for p in paths], runs=args.runs,
                                                   repetitions=args.repetitions).items()}
    for name, r in runs.items():
        for entry in (r, r.get(QAT)):
            if entry is None:
                continue
            entry["int8_p50_ms"] = statistics.median(p50[entry["int8"]])
            if name.startswith(args.tag):
                entry["int8_gain"] = statistics.median(p50[r["fp32"]]) / entry["int8_p50_ms"]
        if name.startswith(args.tag):
            r["fp32_p50_ms"] = statistics.median(p50[r["fp32"]])
    out = {"command": command(), "machine": machine_info(), "teacher": str(args.teacher), "tag": args.tag,
           "arch_args": args.arch_args, "baseline_work": str(args.baseline_work), "seeds": args.seeds,
           "qat_work": str(args.qat_work) if args.qat_work else None,
           "jobs": args.jobs, "bench_runs": args.runs, "repetitions": args.repetitions, "runs": runs,
           "p50_per_repetition_ms": p50, "seconds": clock.seconds(), "load_average": clock.load_average(),
           "summary": summary(runs, args.tag, args.seeds)}
    if args.qat_work is not None:
        out["summary"][QAT] = summary({n: r[QAT] for n, r in runs.items()}, args.tag, args.seeds)
    write_results(RESULTS, f"student-named-{args.tag}", out, markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
