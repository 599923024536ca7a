"""Training speed on a shared CPU: compute.threads auto against every fixed thread count (issue #29).

    python benchmarks/shared_cpu.py [--epochs 3] [--rounds 3] [--quick] [--out DIR]

The default teacher (ResNet-8, the recipe's train settings: precision auto, bf16 where the CPU
has it, + channels_last; batch 128; the embedded Fashion-MNIST subset) is trained by edgekd's
own training loop (edgekd.train.loop.fit with TeacherConfig and the teacher's cross-entropy
step, inside `use(compute)` as a run does) for --epochs epochs, with compute.threads auto and
with each fixed count 1..N (N: the CPUs this process may use). img/s is the loop's own
(images trained / seconds, the per-epoch validation included, alike for every setting). Each
fit resolves its compute afresh, as a new run does, so auto's first trial is paid every time.

Beside it: nothing, one and two busy processes (`python -c 'while True: pass'`, started here
through a shell, so that they are not this process's children, and killed at the end). Within a load, the settings take turns round by round (interleaved),
so a drift of the machine's speed hits all alike; the median over rounds is reported, and the
ratio auto / best fixed count.

Targets (issue #29): beside one busy process auto >= 0.9x the best fixed count's img/s; alone
within 5% of it. Writes shared-cpu.{md,json} with the machine to --out (benchmarks/results).
--quick (a smoke test of this script, not a measurement): 1 round, 1 epoch on 512 images,
alone and beside one busy process; give --out elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS

MIN_RATIO_BUSY = 0.9  # beside one busy process
MIN_RATIO_ALONE = 0.95
BUSY = "while True: pass"


def train_once(setting, tensors: dict, epochs: int) -> dict:
    """One fit of the default teacher with compute.threads `setting`: its img/s and thread record."""
    import torch

    from edgekd.pipeline.context import build_arch
    from edgekd.pipeline.runstate import seed_everything
    from edgekd.recipe import Recipe
    from edgekd.train.compute import resolve, use
    from edgekd.train.loop import cross_entropy_step, fit
    from edgekd.train.plumbing import RunOptions, TrainData

    recipe = Recipe()  # the default run's teacher and train settings
    train = dataclasses.asdict(dataclasses.replace(recipe.compute, threads=setting))
    compute = resolve("cpu", **train)
    cfg = dataclasses.replace(recipe.teacher, epochs=epochs)
    seed_everything(0)
    spec = tensors["spec"]
    model = build_arch(spec, cfg.arch, cfg.arch_args)  # as the teacher stage builds it
    with use(compute):
        data = TrainData.of(tensors["train_x"], tensors["train_y"], tensors["val_x"], tensors["val_y"])
        result = fit(model, cross_entropy_step(model), data, cfg,
                     RunOptions(seed=0, desc=f"threads {setting}", progress=False, log=lambda line: None))
    record = result.compute.get("threads", {})
    return {"img_per_s": result.images_per_second, "seconds": result.seconds,
            "final_threads": record.get("count", torch.get_num_threads()),
            "changes": [{k: c[k] for k in ("step", "from", "to", "img_per_s")} for c in record.get("changes", [])]}


def start_busy(count: int) -> list:
    """Busy processes that are not ours: started through a shell that exits at once, as a
    neighbour's job would be (auto counts its own children, the DataLoader workers, as its own
    load). Their pids, to kill at the end."""
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(BUSY)} >/dev/null 2>&1 & echo $!"
    return [int(subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout)
            for _ in range(count)]


def stop_busy(pids: list) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def measure(settings: list, tensors: dict, loads: list, rounds: int, epochs: int) -> dict:
    """{load: {setting: [per-round runs]}}, the settings interleaved within each load."""
    runs = {}
    for load in loads:
        busy = start_busy(load)
        try:
            time.sleep(0.5 if load else 0)  # the busy processes are running before the first step
            runs[load] = {str(s): [] for s in settings}
            for round_ in range(rounds):
                order = settings if round_ % 2 == 0 else settings[::-1]  # no setting always first
                for setting in order:
                    run = train_once(setting, tensors, epochs)
                    runs[load][str(setting)].append(run)
                    print(f"busy {load}, round {round_ + 1}/{rounds}, threads {setting}: "
                          f"{run['img_per_s']:,.0f} img/s (ended at {run['final_threads']})", flush=True)
        finally:
            stop_busy(busy)
    return runs


def summarize(runs: dict) -> dict:
    summary = {}
    for load, by_setting in runs.items():
        medians = {s: statistics.median(r["img_per_s"] for r in rs) for s, rs in by_setting.items()}
        fixed = {s: v for s, v in medians.items() if s != "auto"}
        best = max(fixed, key=fixed.get)
        rounds = len(by_setting["auto"])
        per_round = [by_setting["auto"][i]["img_per_s"] / max(by_setting[s][i]["img_per_s"] for s in fixed)
                     for i in range(rounds)]
        summary[load] = {"img_per_s": medians, "best_fixed": int(best),
                         "auto_over_best_fixed": medians["auto"] / fixed[best],
                         "per_round_ratio_min": min(per_round), "per_round_ratio_max": max(per_round),
                         "auto_final_threads": [r["final_threads"] for r in by_setting["auto"]]}
    return summary


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    m, summary = result["machine"], result["summary"]
    fixed = [s for s in result["settings"] if s != "auto"]
    lines = ["# Training on a shared CPU: compute.threads auto vs fixed counts (issue #29)", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; CPUs this process may use: {result['cpu_limits']}; "
             f"torch {result['torch']}. Default teacher (ResNet-8, {result['compute']}, batch 128), "
             f"{result['train_images']} training images, {result['epochs']} epoch(s) per fit, "
             f"{result['rounds']} interleaved round(s) per load; img/s: the training loop's own (median over rounds).",
             "", "| beside it | auto | " + " | ".join(f"{s} thread(s)" for s in fixed)
             + " | auto / best fixed | auto ended at |",
             "|---|---:|" + "---:|" * len(fixed) + "---:|---|"]
    for load, row in summary.items():
        label = "nothing" if int(load) == 0 else f"{load} busy process{'es' if int(load) > 1 else ''}"
        cells = [f"{row['img_per_s'][s]:,.0f}" for s in ["auto", *fixed]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['auto_over_best_fixed']:.2f}x "
                     f"({row['per_round_ratio_min']:.2f}-{row['per_round_ratio_max']:.2f}) | "
                     + ", ".join(str(c) for c in row["auto_final_threads"]) + " |")
    lines += ["", "Checks: " + "; ".join(f"{name}: {'pass' if ok else 'FAIL'}" for name, ok in result["checks"].items()),
              "", f"Wall time: {result['wall_seconds']:.0f} s.", ""]
    (out / "shared-cpu.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (auto re-measures every 3)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside it")
    parser.add_argument("--quick", action="store_true", help="a smoke test of this script (not a measurement)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.loads = 1, 1, [0, 1]

    import torch

    from edgekd.data.config import DataConfig
    from edgekd.data.splits import load_splits
    from edgekd.runtime.machine import machine_info
    from edgekd.train.compute import resolve
    from edgekd.train.tensors import to_tensor
    from edgekd.train.threads import cpu_limit, cpu_limits

    data = DataConfig(limit_train=512) if args.quick else DataConfig()
    splits = load_splits(data, seed=0)
    spec = splits.spec
    tensors = {"spec": spec, **{k: to_tensor(getattr(splits, k), spec.mean, spec.std) for k in ("train_x", "val_x")},
               **{k: torch.from_numpy(getattr(splits, k).astype("int64")) for k in ("train_y", "val_y")}}
    settings = ["auto", *range(1, cpu_limit() + 1)]
    start = time.perf_counter()
    runs = measure(settings, tensors, args.loads, args.rounds, args.epochs)
    summary = summarize(runs)
    checks = {}
    if 1 in summary:
        checks[f"beside 1 busy process: auto >= {MIN_RATIO_BUSY}x best fixed"] = (
            summary[1]["auto_over_best_fixed"] >= MIN_RATIO_BUSY)
    if 0 in summary:
        checks[f"alone: auto >= {MIN_RATIO_ALONE}x best fixed"] = summary[0]["auto_over_best_fixed"] >= MIN_RATIO_ALONE
    result = {"command": "python benchmarks/shared_cpu.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
              "cpu_limits": cpu_limits(torch.get_num_threads()), "torch": torch.__version__,
              "compute": resolve("cpu").to_dict(), "train_images": len(splits.train_y), "epochs": args.epochs,
              "rounds": args.rounds, "settings": [str(s) for s in settings], "summary": summary, "runs": runs,
              "checks": checks, "quick": args.quick, "wall_seconds": time.perf_counter() - start}
    write(args.out, result)
    print((args.out / "shared-cpu.md").read_text())
    return 0 if all(checks.values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
