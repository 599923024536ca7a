"""What benchmarks/distill_gain.py and benchmarks/distill_scarce.py share: `edgekd compress
RECIPE --baseline --seed S` for each seed, run as a user runs it (a subprocess, timed), and the
tables of the distilled student against the same student trained alone.

Each seed's run directory is kept in --work: a finished run (report.json) is read again
instead of rerun, and an interrupted one continues with `edgekd compress --resume`, so a long
benchmark that stopped is started again with the same command. The results (--results, by
default benchmarks/results) get NAME.json with every run and NAME.md with the table, the
command, the machine (edgekd.runtime.machine) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common
from common import RESULTS, machine_info, machine_line, pct, table, write_results

# --quick: the embedded subset, tiny models, one epoch: checks the script, measures nothing
QUICK = ["data.name=fashion-mnist-subset", "data.limit_train=600", "data.limit_test=200", "teacher.arch=resnet8",
         "teacher.arch_args={width: 0.25}", "teacher.epochs=2", "teacher.transfer=null", "distill.arch=tinycnn",
         "distill.arch_args={width: 4}", "distill.epochs=1", "bench.warmup=1", "bench.runs=5", "bench.min_seconds=0.0",
         "quantize.max_drop=null"]  # 60 val images cannot judge a 1-point int8 budget: edgekd refuses it


def arguments(doc: str, recipe: str, work: str, quick_sets: list[str], add=None) -> argparse.Namespace:
    """The options both scripts take; `add(parser)` adds a script's own."""
    parser = common.argument_parser(doc)
    if add is not None:
        add(parser)
    parser.add_argument("--recipe", default=recipe, help=f"the recipe (default {recipe})")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every run (repeatable), as edgekd compress --set")
    parser.add_argument("--work", default=work, help=f"where the run directories go (default {work})")
    parser.add_argument("--results", default=None, help="folder for the results (default benchmarks/results; "
                        "with --quick: the --work folder)")
    parser.add_argument("--quick", action="store_true", help="a tiny check of the script on the embedded subset "
                        "(2 seeds, tiny models): nothing it prints is a measurement")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.work = Path(args.work) / ("quick" if args.quick else "full")
    if args.quick:
        args.seeds = args.seeds[:2]
        args.overrides = [*QUICK, *quick_sets, *args.overrides]
    args.results = Path(args.results) if args.results else (args.work if args.quick else RESULTS)
    return args


def run_seed(recipe: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """One `edgekd compress --baseline` run (or its report, when it finished before): its row."""
    argv = [sys.executable, "-m", "edgekd", "compress", recipe, "--baseline", "--seed", str(seed),
               "--out", str(out), "--no-progress", *[a for item in overrides for a in ("--set", item)]]
    report_file = out / "report.json"
    wall = None
    if not report_file.is_file():
        if (out / "state" / "progress.json").is_file():  # stopped before: continue it
            argv = [sys.executable, "-m", "edgekd", "compress", "--resume", str(out), "--no-progress"]
        print(f"[seed {seed}] {shlex.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(argv, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            if not report_file.is_file():
                raise SystemExit(f"[seed {seed}] edgekd compress failed (exit {done.returncode}); its run "
                                 f"directory {out} is kept: run this script again to resume it")
            # seen on this project's machine: a process that trained with several threads in channels_last
            # can crash in the native libraries' teardown, after every file of the run was written
            print(f"[seed {seed}] warning: edgekd compress exited with {done.returncode} after writing "
                  f"{report_file}; its results are used", flush=True)
    report = json.loads(report_file.read_text())
    return seed_row(report, seed, wall, shlex.join(["python", *argv[1:]]))


def seed_row(report: dict, seed: int, wall: float | None, command: str) -> dict:
    stages = report["stages"]
    distill, teacher = stages["distill"], stages["teacher"]
    models = {m["stage"]: m for m in report["models"]}
    return {
        "seed": seed, "command": command, "wall_seconds": wall,
        "stage_seconds": {name: stage.get("seconds") for name, stage in stages.items()},
        "teacher_test_top1": models["teacher"]["top1"], "teacher_val_top1": teacher.get("val_top1"),
        "teacher_params": models["teacher"]["params"], "teacher_images": teacher.get("images"),
        "student_test_top1": distill["test_top1"], "alone_test_top1": distill["baseline"]["test_top1"],
        "gain_points": distill["gain_points"], "val_gain_points": distill["val_gain_points"],
        "int8_test_top1": models["int8"]["top1"] if "int8" in models else None,
        "student_params": distill["params"], "student_macs": distill["macs"], "steps": distill["steps"],
        "distill_images": distill.get("images"), "alone_images": distill["baseline"].get("images"),
        "teacher_outputs": distill.get("teacher_outputs"), "teachers": distill.get("teachers", 1),
    }


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation (0 for one value)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def summary(rows: list[dict]) -> dict:
    keys = ("teacher_test_top1", "student_test_top1", "alone_test_top1", "gain_points", "int8_test_top1")
    return {key: spread([r[key] for r in rows]) for key in keys}


def write_seed_results(name: str, title: str, args, rows: list[dict], target: tuple[str, bool],
                       notes: list[str]) -> None:
    """NAME.json and NAME.md in args.results."""
    machine = machine_info()
    walls = [r["wall_seconds"] for r in rows if r["wall_seconds"] is not None]
    result = {"command": common.command(),
              "recipe": args.recipe, "overrides": args.overrides, "seeds": args.seeds, "quick": args.quick,
              "machine": machine, "wall_seconds": sum(walls) if walls else None, "runs": rows,
              "summary": summary(rows), "target": {"text": target[0], "met": target[1]}}
    command_line = (f"Command: `{result['command']}` (each seed: `edgekd compress {args.recipe} --baseline --seed S`, "
                    "the runs' own commands below)")
    s = result["summary"]
    header = ["seed", "teacher %", "distilled student %", "student alone %", "gain (points)", "int8 %", "params",
              "steps", "s"]
    cells = [[r["seed"], pct(r["teacher_test_top1"]), pct(r["student_test_top1"]), pct(r["alone_test_top1"]),
              f"{r['gain_points']:+.2f}", pct(r["int8_test_top1"]), f"{r['student_params']:,}", f"{r['steps']:,}",
              "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"] for r in rows]
    mean_row = (f"| mean ± std | {s['teacher_test_top1']} | {s['student_test_top1']} | {s['alone_test_top1']} | "
                f"{s['gain_points']} | {s['int8_test_top1']} | | | |")
    lines = [f"# {title}", "", command_line, "", machine_line(machine, "os", "python", "onnxruntime") + ".",
             f"Wall time: {result['wall_seconds'] or 0:.0f} s for the runs made by this invocation.", "",
             *notes, "", *table(header, "rrrrrrrrr", cells), mean_row]
    measured = ("Top-1 on the test split: the teacher's and int8's from the run's bench (ONNX Runtime), the distilled "
                "student's and the student alone's in PyTorch fp32 (stages.distill.test_top1 and .baseline.test_top1).")
    lines += ["", f"Target: {target[0]}: **{'met' if target[1] else 'NOT met'}**.", "", measured,
              "", "Runs:", "", *[f"- seed {r['seed']}: `{r['command']}`" for r in rows]]
    if args.quick:
        lines.insert(2, "**--quick: a check of the script on tiny data and models; these are not measurements.**\n")
    write_results(args.results, name, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
