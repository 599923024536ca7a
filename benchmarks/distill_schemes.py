"""How teacher and student train: DML, born-again and EMA rows for the distillation comparison.

    python benchmarks/distill_schemes.py [--schemes alone,dml,born-again,ema] [--seeds 0,1,2] [--epochs 2]
                                         [--teacher-epochs 4] [--work /tmp/edgekd-distill-kinds]

Reuses benchmarks/distill_kinds.py (same data, the same ResNet-8 teacher file in --work,
trained there first if missing, the same TinyCNN width-4 student and epochs, and the same
student initialization per seed: torch.manual_seed(1000 + seed)), and trains the student
with each scheme of edgekd.schemes:

    alone       the baseline: the student on labels only (cross-entropy), no teacher
    dml         2 peers of the student learn together (deep mutual learning), no teacher;
                peer 0 has the seed's initialization; the best peer on val is the student
    born-again  generation 1 = KD from the teacher (the 'kd' row's setting), generation 2 =
                a fresh student distilled from generation 1; the best generation on val
    ema         KD from an exponential moving average of the student itself, no teacher

Each run is evaluated on the 10,000 test images. "vs alone" compares with this script's
own 'alone' row (same epochs); the table also shows the 'alone' and 'kd' rows of
distill-kinds.json (when present) for reference, with their epochs. Seeds that an earlier
invocation with the same settings finished are kept and not rerun. Results:
benchmarks/results/distill-schemes.md and .json. One torch thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import distill_kinds as kinds  # noqa: E402

from edgekd import schemes  # noqa: E402
from edgekd.bench import machine_info  # noqa: E402
from edgekd.models import count_params  # noqa: E402
from edgekd.recipe import DistillConfig  # noqa: E402
from edgekd.train import accuracy  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# temperature / alpha per scheme: DML as in Zhang et al. (CE + KL at T = 1, equal weights),
# born-again as the 'kd' row (T = 4, alpha 0.9), EMA with an even mix (its teacher starts untrained)
SCHEMES = {
    "alone": {"alpha": 0.0},  # the baseline: cross-entropy on labels only, no teacher
    "dml": {"scheme": "online", "peers": 2, "temperature": 1.0, "alpha": 0.5},
    "born-again": {"scheme": "born-again", "generations": 2, "temperature": 4.0, "alpha": 0.9},
    "ema": {"scheme": "ema", "ema_decay": 0.999, "temperature": 4.0, "alpha": 0.5},
}


def config(name: str, epochs: int) -> DistillConfig:
    student = kinds.STUDENT
    return DistillConfig(arch=student["arch"], arch_args=student["arch_args"], epochs=epochs, batch_size=128,
                         lr=0.01, augment=False, **SCHEMES[name])


def run_scheme(name: str, seed: int, teacher, data: dict, epochs: int) -> dict:
    cfg = config(name, epochs)
    train = {k: data[k] for k in ("train_x", "train_y", "val_x", "val_y")}
    test = (data["test_x"], data["test_y"])
    torch.manual_seed(1000 + seed)  # the same initialization as every row of distill_kinds.py
    student = kinds.build(kinds.STUDENT, data)
    start = time.perf_counter()
    if name == "alone":
        from edgekd.train import cross_entropy_step, fit

        result = fit(student, cross_entropy_step(student), **train, cfg=cfg, seed=seed, desc="alone", progress=False)
        outcome = schemes.SchemeResult(student=student, fit=result, details={})
        extra = {}
    elif name == "dml":
        peers = [student] + [kinds.build(kinds.STUDENT, data) for _ in range(cfg.peers - 1)]
        outcome = schemes.mutual_learning(peers, **train, cfg=cfg, seed=seed, progress=False)
        extra = {"peers_test_top1": [accuracy(p, *test) for p in peers]}
    elif name == "born-again":
        generations = [student]

        def fresh(k):
            torch.manual_seed(1000 + seed + 100 * k)
            generations.append(kinds.build(kinds.STUDENT, data))
            return generations[-1]

        outcome = schemes.born_again(student, teacher, make_student=fresh, **train, cfg=cfg, seed=seed,
                                     progress=False)
        extra = {"generations_test_top1": [accuracy(g, *test) for g in generations]}
    else:
        outcome = schemes.ema_self_distill(student, **train, cfg=cfg, seed=seed, progress=False)
        extra = {}
    seconds = round(time.perf_counter() - start, 1)
    return {"seed": seed, "test_top1": accuracy(outcome.student, *test),
            "val_top1": accuracy(outcome.student, data["val_x"], data["val_y"]), "seconds": seconds,
            **outcome.details, **extra}


def write_all(budgets: dict) -> None:
    """distill-schemes.json ({"budgets": {epochs: results}}) and .md, one section per epoch budget."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill-schemes.json").write_text(json.dumps({"budgets": budgets}, indent=2) + "\n")
    md = ["# Distillation schemes on Fashion-MNIST (DML, born-again, EMA)", ""]
    for _, results in sorted(budgets.items(), key=lambda item: int(item[0])):
        md += budget_markdown(results)
    (RESULTS / "distill-schemes.md").write_text("\n".join(md))


def budget_markdown(results: dict) -> list[str]:
    baselines = {}
    kinds_file = RESULTS / "distill-kinds.json"
    if kinds_file.is_file():
        other = json.loads(kinds_file.read_text())
        if other.get("teacher") == results["teacher"]:
            baselines = {k: v for k, v in other["kinds"].items() if k in ("alone", "kd")}
    # "vs alone": against this script's own 'alone' row (same epochs), else distill-kinds' if its epochs match
    own_alone = results["schemes"].get("alone", {}).get("summary", {}).get("mean")
    kinds_alone = baselines.get("alone", {})
    alone = own_alone if own_alone is not None else (
        kinds_alone.get("summary", {}).get("mean") if kinds_alone.get("epochs") == results["epochs"] else None)
    t, m = results["teacher"], results["machine"]
    md = [
        f"## {results['epochs']} student epochs",
        "",
        "Written by `benchmarks/distill_schemes.py`, which reuses `benchmarks/distill_kinds.py`: full "
        "Fashion-MNIST (54,000 train / 6,000 val / 10,000 test), the same teacher, student, epochs and "
        "per-seed student initialization as the distill-kinds table.",
        "",
        f"Teacher: {t['arch']} ({t['params']:,} params), {t['epochs']} epochs, test top-1 {t['test_top1']:.2f}%. "
        f"Student: {results['student']['arch']} {results['student']['arch_args']} "
        f"({results['student']['params']:,} params), {results['epochs']} epochs per training.",
        "",
        "| scheme | settings | epochs | test top-1 % (mean ± std) | vs alone | seeds | s per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in baselines.items():
        s = row["summary"]
        delta = "" if alone is None or row.get("epochs") != results["epochs"] else f"{s['mean'] - alone:+.2f}"
        md.append(f"| {kind} (from distill-kinds.json) | alpha {row['alpha']}, temperature {row.get('temperature', '?')} | "
                  f"{row.get('epochs')} | {s['mean']:.2f} ± {s['std']:.2f} | "
                  f"{delta} | {s['n']} | {sum(r['seconds'] for r in row['runs']) / len(row['runs']):.0f} |")
    for name, row in results["schemes"].items():
        s = row["summary"]
        delta = "" if alone is None or name == "alone" else f"{s['mean'] - alone:+.2f}"
        settings = ", ".join(f"{k} {v}" for k, v in row["settings"].items() if k != "scheme")
        seconds = sum(r["seconds"] for r in row["runs"]) / len(row["runs"])
        md.append(f"| {name} | {settings or '-'} | {results['epochs']} | {s['mean']:.2f} ± {s['std']:.2f} | {delta} | "
                  f"{s['n']} | {seconds:.0f} |")
    scored = {n: r["summary"]["mean"] for n, r in results["schemes"].items() if n != "alone"}
    if alone is not None and scored:
        best = max(scored, key=scored.get)
        md += ["", f"Best scheme: {best}, {scored[best] - alone:+.2f} points mean top-1 against 'alone' at "
               f"{results['epochs']} epochs ({'better' if scored[best] > alone else 'NOT better'} than the student "
               "trained alone at this budget)."]
    if any(row.get("epochs") != results["epochs"] for row in baselines.values()):
        md += ["", "The distill-kinds.json rows shown for reference were trained for another number of epochs "
               "(and temperature); 'vs alone' is left empty for them: compare the schemes with this table's own "
               "'alone' row."]
    md += ["", "Per run:", ""]
    for name, row in results["schemes"].items():
        for r in row["runs"]:
            if name == "dml":
                what = (f"peers test {', '.join(f'{v:.2f}' for v in r['peers_test_top1'])}; val "
                        f"{', '.join(f'{v:.2f}' for v in r['peers_val_top1'])}; best peer {r['best_peer']}")
            elif name == "born-again":
                what = (f"generations test {', '.join(f'{v:.2f}' for v in r['generations_test_top1'])}; val "
                        f"{', '.join(str(g['val_top1']) for g in r['generations'])}; kept generation "
                        f"{r['best_generation']}")
            elif name == "alone":
                what = f"val {r['val_top1']:.2f}"
            else:
                what = (f"val student {r['student_val_top1']:.2f}, EMA {r['ema_val_top1']:.2f}; continues: "
                        f"{r['continues']}")
            md.append(f"- {name}, seed {r['seed']}: test top-1 {r['test_top1']:.2f}% ({what}; {r['seconds']} s)")
    md += [
        "",
        "Compute differs per scheme: DML trains 2 students together (2x the student compute of "
        "'alone'), born-again trains 2 generations one after the other (2x), EMA adds one forward "
        "pass of the average per step.",
        "",
        "Commands (rows are merged from these invocations, newest last):",
        "",
        *[f"- `{c['command']}` ({c['wall_seconds']} s wall, schemes {', '.join(c['schemes'])}"
          + ("" if c.get("finished", True) else "; stopped before the end: the rows have the seeds it finished") + ")"
          for c in results["commands"]],
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; torch {torch.__version__} with 1 thread. Other jobs "
        "shared the CPU during the run, so seconds are indicative only.",
        "",
    ]
    return md


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2, help="student epochs (as distill-kinds.json's rows)")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--work", default="/tmp/edgekd-distill-kinds", help="where distill_kinds.py keeps the teacher")
    parser.add_argument("--kd-temperature", type=float, help="born-again and ema: KD temperature (default 4)")
    parser.add_argument("--kd-alpha", type=float, help="born-again and ema: KD weight alpha (default 0.9 / 0.5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in args.schemes.split(",") if n]
    unknown = [n for n in names if n not in SCHEMES]
    if unknown:
        parser.error(f"unknown scheme(s) {', '.join(unknown)}; available: {', '.join(SCHEMES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    data = kinds.load_data()
    teacher, teacher_info = kinds.trained_teacher(data, Path(args.work), args.teacher_epochs)
    if args.kd_temperature is not None or args.kd_alpha is not None:  # born-again and ema's KD settings
        for name in ("born-again", "ema"):
            SCHEMES[name].update({k: v for k, v in (("temperature", args.kd_temperature), ("alpha", args.kd_alpha))
                                  if v is not None})
    results_file = RESULTS / "distill-schemes.json"
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
    budgets = saved.get("budgets", {str(saved["epochs"]): saved} if "epochs" in saved else {})
    if any(b.get("teacher") != teacher_info for b in budgets.values()):
        budgets = {}  # rows of another teacher do not mix
    # one table per epoch budget; seeds of the same scheme and settings are kept
    results = budgets.setdefault(str(args.epochs), {"schemes": {}, "commands": []})
    results.update(teacher=teacher_info, machine=machine_info(), epochs=args.epochs,
                   student={**kinds.STUDENT, "params": count_params(kinds.build(kinds.STUDENT, data))})
    command = {"command": "python benchmarks/distill_schemes.py " + " ".join(sys.argv[1:]), "schemes": names,
               "wall_seconds": 0.0, "finished": False}
    results["commands"].append(command)
    for name in names:
        settings = {k: v for k, v in dataclasses.asdict(config(name, args.epochs)).items()
                    if k in SCHEMES[name]}
        earlier = results["schemes"].get(name, {})
        runs = list(earlier.get("runs", [])) if earlier.get("settings") == settings else []
        for seed in seeds:
            if any(r["seed"] == seed for r in runs):  # finished by an earlier invocation: kept, not rerun
                continue
            run = run_scheme(name, seed, teacher, data, args.epochs)
            runs.append(run)
            print(f"{name} seed {seed}: test top-1 {run['test_top1']:.2f}% ({run['seconds']} s)", flush=True)
            # after every run: an interrupted invocation leaves the seeds it finished, marked as such
            results["schemes"][name] = {"settings": settings, "runs": runs, "summary": kinds.summarize(runs)}
            command["wall_seconds"] = round(time.perf_counter() - start, 1)
            write_all(budgets)
    command["finished"] = True
    write_all(budgets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
