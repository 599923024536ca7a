"""Does distillation pay with full labels? The distilled student against the same student
trained alone, 3 seeds, on the full Fashion-MNIST.

    python benchmarks/distill_gain.py [--recipe models/fashion-mnist/distill-vs-alone.yaml]
        [--seeds 0,1,2] [--set KEY=VALUE ...] [--teacher-per-seed] [--work /tmp/edgekd-distill-gain]
        [--results DIR] [--quick]

Each seed is `edgekd compress RECIPE --baseline --seed S`: the distill stage trains the student
with the teacher and, from the same initial weights with the same schedule, augmentation and
number of optimizer steps, alone on cross-entropy (distill.baseline), and reports the test
top-1 of both and the gain. The teacher is trained once, by seed 0's run, and loaded by the
others (teacher.weights, teacher.epochs 0) unless --teacher-per-seed, or every seed loads the
teacher given with --set teacher.weights=PATH: the seeds then measure the student's variation
with one teacher. (A seed also draws its own val split, so the first
teacher has seen some of another seed's val images; val only picks the best epoch, and the
gain is measured on the test split.)

Results: benchmarks/results/distill-gain.json and .md (mean ± std over the seeds, the command,
the machine, the wall time). Target (issue 16): a student of at most 100K parameters, distilled,
beats the same student alone by at least 0.5 points mean test top-1. --quick checks the script
on the embedded subset with tiny models (results in the --work folder). Exits 1 when the target is
missed (not with --quick).
"""

from __future__ import annotations

import sys

from baseline_runs import arguments, run_seed, write_seed_results

MIN_GAIN = 0.5
MAX_PARAMS = 100_000


def main() -> int:
    import statistics

    def add(parser):
        parser.add_argument("--teacher-per-seed", action="store_true",
                            help="train a teacher in every seed's run (default: seed 0's, loaded by the others)")

    args = arguments(__doc__, "models/fashion-mnist/distill-vs-alone.yaml", "/tmp/edgekd-distill-gain", [], add)
    rows = []
    given = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("teacher.weights=")), None)
    for seed in args.seeds:
        overrides = list(args.overrides)
        if rows and not args.teacher_per_seed and given is None:  # the first run's teacher, loaded
            first = args.work / f"seed{args.seeds[0]}" / "teacher.safetensors"
            overrides += [f"teacher.weights={first}", "teacher.epochs=0", "teacher.transfer=null"]
        rows.append(run_seed(args.recipe, seed, args.work / f"seed{seed}", overrides))
    gain = statistics.mean(r["gain_points"] for r in rows)
    params = max(r["student_params"] for r in rows)
    teacher = ("a teacher per seed" if args.teacher_per_seed
               else f"one teacher ({given}), loaded by every seed's run" if given is not None
               else "one teacher (the first seed's run), loaded by the others")
    shown = ", ".join(f"`{o}`" for o in args.overrides)
    note = (f"Recipe `{args.recipe}`{' with ' + shown if shown else ''}; {teacher}. Each run: the distilled student "
            "and the same student alone (distill.baseline: same initial weights, schedule, augmentation and "
            "optimizer steps).")
    met = gain >= MIN_GAIN and params <= MAX_PARAMS
    target = (f"mean gain >= {MIN_GAIN} points with a student of <= {MAX_PARAMS:,} parameters "
              f"(mean {gain:+.2f}, {params:,} parameters)")
    write_seed_results("distill-gain", "Distillation's gain with full labels (Fashion-MNIST)", args, rows,
                       (target, met), [note])
    return 0 if args.quick or met else 1


if __name__ == "__main__":
    sys.exit(main())
