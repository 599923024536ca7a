"""Issue 27's time item: the whole headline recipe with `distill.arch: auto`, from scratch, within 60 minutes?

One `edgekd compress models/fashion-mnist-headline.yaml` run on full Fashion-MNIST: the ResNet-20
teacher trained as the headline trains it, then the student search with the settings that
student-search.md's last section measured on 3 seeds (blocks basic, inverted and rep_ac; as fast
as ResNet-8's int8 model; int8 at least 2.5x faster than the candidate's own fp32 model), the
found student distilled with the headline's 30 epochs, and int8 by QAT. Nothing else may run
meanwhile: the result is the wall time of that one command, with each stage's seconds from its
report, and the 1-minute load average at both ends.

Writes benchmarks/results/auto-recipe-time.{json,md}. A run folder that already has a report is
read, not run again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import common
from common import RESULTS, Clock, command, machine_line, machine_with_torch, table, write_results

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = ROOT / "models" / "fashion-mnist-headline.yaml"
MINUTES = 60  # issue 27: the whole headline recipe with arch: auto
AUTO_SETTINGS = {  # as in docs/student-search.md ("min_int8_speedup") and student-named-rep_ac.md
    "distill.arch": "auto", "distill.search.as_fast_as": "resnet8", "distill.search.threads": 1,
    "distill.search.batch": 1, "distill.search.blocks": "[basic,inverted,rep_ac]",
    "distill.search.min_int8_speedup": 2.5, "quantize.method": "qat",
}


def run(out: Path, seed: int, threads: int) -> float | None:
    """Wall seconds of the run (None: an earlier invocation ran it)."""
    if (out / "report.json").is_file():
        return None
    sets = {**AUTO_SETTINGS, "compute.threads": threads}
    args = [sys.executable, "-m", "edgekd", "compress", str(HEADLINE), "--data", "fashion-mnist", "--seed", str(seed),
            "--out", str(out), "--no-progress", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "a", encoding="utf-8") as log:
        code = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"edgekd compress failed (exit {code}); see {out.with_suffix('.log')}")
    return time.perf_counter() - start


def markdown(out: dict) -> str:
    r = out["report"]
    rows = [[name, f"{seconds:.0f}", f"{seconds / 60:.1f}"] for name, seconds in out["stage_seconds"].items()]
    wall, minutes = out["wall_seconds"], minutes_counted(out)
    return "\n".join([
        "# The whole headline recipe with `distill.arch: auto` (issue 27's time item)", "",
        f"Command: `{out['command']}`. " + machine_line(out["machine"], "torch") + ".", "",
        f"One `edgekd compress` of the headline recipe from scratch (seed {out['seed']}, "
        f"`compute.threads: {out['threads']}`), with `{' '.join(f'--set {k}={v}' for k, v in AUTO_SETTINGS.items())}`. "
        f"Nothing else ran; 1-minute load average {out['load_average'][0]:.2f} at the start, "
        f"{out['load_average'][1]:.2f} at the end.", "",
        *table(["stage", "seconds", "minutes"], "lrr", rows), "",
        f"Wall time of the command: **{minutes:.1f} min** (target <= {MINUTES}: "
        f"**{'met' if minutes <= MINUTES else 'not met'}**)"
        + ("" if wall is not None else " (the sum of the stages: the run was made by an earlier invocation)") + ".", "",
        f"Found: {r['student']} ({r['params']:,} params); test top-1 teacher {r['teacher_top1']:.2f}%, student "
        f"fp32 {r['fp32_top1']:.2f}%, int8 (QAT) {r['int8_top1']:.2f}%. Search: {r['search_message']}.",
    ]) + "\n"


def minutes_counted(out: dict) -> float:
    """The command's wall time, or the sum of its stages where an earlier invocation ran it."""
    wall = out["wall_seconds"]
    return (wall if wall is not None else sum(out["stage_seconds"].values())) / 60


def read_report(run_dir: Path) -> dict:
    from edgekd.search.space import describe

    report = json.loads((run_dir / "report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    distill = report["stages"]["distill"]
    return {"student": describe({"arch": distill["arch"], "arch_args": distill.get("arch_args") or {}}),
            "params": distill["params"], "teacher_top1": models["teacher.fp32"]["top1"],
            "fp32_top1": models["model.fp32"]["top1"], "int8_top1": models["model.int8"]["top1"],
            "search_message": (distill.get("search") or {}).get("message"),
            "stage_seconds": {k: v.get("seconds") for k, v in report["stages"].items()
                              if isinstance(v, dict) and v.get("seconds") is not None}}


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the run folder (kept; read when it has a report)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="compute.threads of the run")
    args = parser.parse_args()
    clock = Clock()
    wall = run(args.out, args.seed, args.threads)
    report = read_report(args.out)
    out = {"command": command(), "machine": machine_with_torch(), "seed": args.seed, "threads": args.threads,
           "settings": AUTO_SETTINGS, "wall_seconds": wall, "load_average": clock.load_average(),
           "stage_seconds": report.pop("stage_seconds"), "report": report}
    out["met"] = minutes_counted(out) <= MINUTES
    write_results(RESULTS, "auto-recipe-time", out, markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
