"""What knowledge to distil: the same student trained alone and with each kind, full Fashion-MNIST.

    python benchmarks/distill_kinds.py [--kinds alone,kd,fitnet,kd+fitnet,at,rkd,sp] [--seeds 0,1,2]
                                       [--epochs 3] [--alpha 0.5] [--temperature 2]
                                       [--teacher-epochs 4] [--work /tmp/edgekd-distill-kinds]

One teacher (ResNet-8) is trained once on the 54,000 training images (6,000 held out for
validation) and saved in --work; a later invocation reuses it, so kinds can be added to
the table without retraining it. Then the same small student (TinyCNN, width 4) is
trained for --epochs with each kind of knowledge, from the same initialization per seed,
and evaluated on the 10,000 test images. Every run uses one torch thread.

Results go to benchmarks/results/distill-kinds.json, keyed by kind (rows of an earlier
run are kept, so another script or a later --kinds run appends rows), and the Markdown
table distill-kinds.md is rebuilt from all rows (two invocations with different --kinds may
run at the same time: each merges its rows into the file as it is when it writes). Target (issue #3): the best distilled
student beats the student alone by at least 0.5 points mean top-1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekd.artifacts import load_weights, save_weights  # noqa: E402
from edgekd.bench import machine_info  # noqa: E402
from edgekd.data import load_splits  # noqa: E402
from edgekd.models import build_model, count_params  # noqa: E402
from edgekd.recipe import DataConfig, DistillConfig, TeacherConfig  # noqa: E402
from edgekd.train import accuracy, cross_entropy_step, fit, to_tensor  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TEACHER = {"arch": "resnet8", "arch_args": {}}
STUDENT = {"arch": "tinycnn", "arch_args": {"width": 4}}

# Each kind: whether it has the KD (response) term (weight --alpha; without it, CE on labels only) and the
# feature/relation terms, with the weights of the papers' reference code (AT 1000, RKD
# 25/50, SP 3000). Layers: TinyCNN features.2 / features.4 (8x14x14 / 16x7x7) against
# ResNet-8 layers.1 / layers.2 (32x14x14 / 64x7x7), i.e. the last two stages of each.
KINDS = {
    "alone": {"kd": False, "terms": []},
    "kd": {"kd": True, "terms": []},
    "fitnet": {"kd": False, "terms": [{"kind": "fitnet", "student": "features.4", "teacher": "layers.2", "weight": 1.0}]},
    "at": {"kd": False, "terms": [{"kind": "at", "student": ["features.2", "features.4"],
                                    "teacher": ["layers.1", "layers.2"], "weight": 1000.0}]},
    "rkd": {"kd": False, "terms": [{"kind": "rkd", "distance": 25.0, "angle": 50.0}]},
    "sp": {"kd": False, "terms": [{"kind": "sp", "student": "features.4", "teacher": "layers.2", "weight": 3000.0}]},
    "kd+fitnet": {"kd": True, "terms": [{"kind": "fitnet", "student": "features.4", "teacher": "layers.2",
                                           "weight": 1.0}]},
}
KINDS = {k: KINDS[k] for k in ("alone", "kd", "fitnet", "kd+fitnet", "at", "rkd", "sp")}  # shared caches adjacent


def load_data():
    splits = load_splits(DataConfig(name="fashion-mnist"), seed=0)
    spec = splits.spec

    def labels(y):
        return torch.from_numpy(y.astype("int64"))

    return {
        "train_x": to_tensor(splits.train_x, spec.mean, spec.std), "train_y": labels(splits.train_y),
        "val_x": to_tensor(splits.val_x, spec.mean, spec.std), "val_y": labels(splits.val_y),
        "test_x": to_tensor(splits.test_x, spec.mean, spec.std), "test_y": labels(splits.test_y),
        "classes": spec.num_classes, "channels": spec.channels,
    }


def build(spec: dict, data: dict):
    return build_model(spec["arch"], in_channels=data["channels"], num_classes=data["classes"], **spec["arch_args"])


def trained_teacher(data: dict, work: Path, epochs: int):
    """The teacher from --work, trained there first if it is not there yet."""
    weights, info_file = work / "teacher.safetensors", work / "teacher.json"
    teacher = build(TEACHER, data)
    if weights.is_file() and info_file.is_file():
        info = json.loads(info_file.read_text())
        load_weights(teacher, weights)
        print(f"teacher reused from {weights} (trained by: {info['command']})", flush=True)
        return teacher.eval(), info
    torch.manual_seed(0)
    teacher = build(TEACHER, data)
    cfg = TeacherConfig(arch=TEACHER["arch"], epochs=epochs, batch_size=128, lr=0.003, augment=False)
    train = {k: data[k] for k in ("train_x", "train_y", "val_x", "val_y")}
    start = time.perf_counter()
    result = fit(teacher, cross_entropy_step(teacher), cfg=cfg, seed=0, desc="teacher", progress=False, **train)
    info = {
        **TEACHER, "epochs": epochs, "params": count_params(teacher),
        "val_top1": result.best_val_top1, "test_top1": accuracy(teacher, data["test_x"], data["test_y"]),
        "train_seconds": round(time.perf_counter() - start, 1),
        "command": "python benchmarks/distill_kinds.py " + " ".join(sys.argv[1:]),
    }
    work.mkdir(parents=True, exist_ok=True)
    save_weights(teacher, weights)
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    print(f"teacher: test top-1 {info['test_top1']:.2f}% in {info['train_seconds']} s", flush=True)
    return teacher.eval(), info


def run_kind(kind: str, seed: int, teacher, data: dict, args, teacher_cache: dict) -> dict:
    from edgekd.distill import distill

    spec = KINDS[kind]
    torch.manual_seed(1000 + seed)  # the same student initialization for every kind
    student = build(STUDENT, data)
    cfg = DistillConfig(arch=STUDENT["arch"], arch_args=STUDENT["arch_args"], epochs=args.epochs, batch_size=128,
                        lr=0.01, augment=False, temperature=args.temperature, alpha=args.alpha if spec["kd"] else 0.0,
                        terms=spec["terms"])
    train = {k: data[k] for k in ("train_x", "train_y", "val_x", "val_y")}
    start = time.perf_counter()
    # teacher outputs are cached once (inputs are not augmented) and shared by every seed and kind
    result = distill(student, teacher, cfg=cfg, seed=seed, progress=False, teacher_cache=teacher_cache, **train)
    return {
        "seed": seed, "test_top1": accuracy(student, data["test_x"], data["test_y"]),
        "val_top1": result.best_val_top1, "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarize(runs: list[dict]) -> dict:
    values = [r["test_top1"] for r in runs]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def write_results(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_file = RESULTS / "distill-kinds.json"
    if results_file.is_file():  # rows another invocation wrote meanwhile
        on_disk = json.loads(results_file.read_text())
        if on_disk.get("teacher") == results["teacher"]:
            results["kinds"] = {**on_disk.get("kinds", {}), **results["kinds"]}
            seen = {c["command"] for c in results["commands"]}
            results["commands"] = [c for c in on_disk.get("commands", []) if c["command"] not in seen] + results["commands"]
            results["notes"] = list(dict.fromkeys(on_disk.get("notes", []) + results.get("notes", [])))
    def rank(key: str):
        kind = key.partition("@")[0].partition("-")[0]
        return key.partition("@")[2], list(KINDS).index(kind) if kind in KINDS else len(KINDS), key

    order = sorted(results["kinds"], key=rank)
    results["kinds"] = {k: results["kinds"][k] for k in order}
    (RESULTS / "distill-kinds.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = results["kinds"]
    teacher = results["teacher"]

    def group(key: str) -> tuple:
        """A row is compared with the 'alone' row of the same student width (rows of another
        width are keyed 'kind@w<width>') and the same number of epochs."""
        return key.partition("@")[2], rows[key]["epochs"]

    alone = {group(k): r["summary"]["mean"] for k, r in rows.items() if k.partition("@")[0].partition("-")[0] == "alone"}
    md = [
        "# Distillation kinds on Fashion-MNIST",
        "",
        "Written by `benchmarks/distill_kinds.py`. Full Fashion-MNIST: 54,000 train / 6,000 val "
        "(split seed 0) / 10,000 test images.",
        "",
        f"Teacher: {teacher['arch']} ({teacher['params']:,} params), {teacher['epochs']} epochs, "
        f"test top-1 **{teacher['test_top1']:.2f}%** (val {teacher['val_top1']:.2f}%), trained in "
        f"{teacher['train_seconds']} s by `{teacher['command']}`.",
        "",
        f"Student: {results['student']['arch']} {results['student']['arch_args']} "
        f"({results['student']['params']:,} params) unless the row says otherwise, the same initialization per "
        "seed for every kind.",
        "",
        "| kind | student | alpha | T | terms | epochs | test top-1 % (mean ± std) | vs alone | seeds | s per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in rows.items():
        s = row["summary"]
        base = alone.get(group(kind))
        delta = "" if base is None or kind.startswith("alone") else f"{s['mean'] - base:+.2f}"
        if base is None and not kind.startswith("alone"):
            delta = "(no alone row)"
        student = row.get("student", results["student"])
        student = f"{student['arch']} w{student['arch_args'].get('width')} ({student['params']:,})"
        terms = ", ".join(t["kind"] for t in row["terms"]) or "-"
        seconds = statistics.mean(r["seconds"] for r in row["runs"])
        temperature = row["temperature"] if row["alpha"] > 0 else "-"  # no KD term: T plays no part
        md.append(f"| {kind} | {student} | {row['alpha']} | {temperature} | {terms} | {row['epochs']} | "
                  f"{s['mean']:.2f} ± {s['std']:.2f} | "
                  f"{delta} | {s['n']} | {seconds:.0f} |")
    md += ["", "Per-kind settings and every run (seed, val and test top-1, seconds) are in distill-kinds.json.", ""]
    for name, base in alone.items():
        distilled = {k: r["summary"]["mean"] for k, r in rows.items()
                     if group(k) == name and not k.startswith("alone")}
        if not distilled:
            continue
        best = max(distilled, key=distilled.get)
        gain = distilled[best] - base
        verdict = "met" if gain >= 0.5 else "NOT met"
        width, epochs = name
        where = f"{width or 'w' + str(results['student']['arch_args'].get('width'))}, {epochs} epochs"
        md.append(f"Target (best distilled student >= alone + 0.5 points mean top-1), {where}: "
                  f"**{verdict}** - best kind '{best}' {distilled[best]:.2f}% vs alone {base:.2f}% ({gain:+.2f} points).")
        md.append("")
    for note in results.get("notes", []):
        md.append(note)
        md.append("")
    md += [
        "Commands (rows are merged from these invocations, newest last):",
        "",
        *[f"- `{c['command']}` ({c['wall_seconds']} s wall, kinds {', '.join(c['kinds'])})" for c in results["commands"]],
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, {results['machine']['os']}; "
        "torch with 1 thread. Other jobs shared the CPU during the run, so seconds are indicative only.",
        "",
    ]
    (RESULTS / "distill-kinds.md").write_text("\n".join(md))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from: {', '.join(KINDS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3, help="student epochs")
    parser.add_argument("--student-width", type=int, default=4, help="other widths get rows keyed 'kind@w<width>'")
    parser.add_argument("--tag", default="", help="rows keyed 'kind-TAG' (other settings of the same kind)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the KD term in the kinds that have it")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--note", action="append", default=[], help="a line for the results file (repeatable)")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--work", default="/tmp/edgekd-distill-kinds", help="where the teacher is kept")
    parser.add_argument("--fresh", action="store_true", help="start a new results file instead of adding rows")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; see the note in the results
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; available: {', '.join(KINDS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    data = load_data()
    teacher, teacher_info = trained_teacher(data, Path(args.work), args.teacher_epochs)
    if not kinds:
        return 0
    results_file = RESULTS / "distill-kinds.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() and not args.fresh else {
        "kinds": {}, "commands": []}
    if results.get("teacher") not in (None, teacher_info):
        print("note: a different teacher produced the existing rows; starting a new results file", flush=True)
        results = {"kinds": {}, "commands": []}
    results["notes"] = list(dict.fromkeys(results.get("notes", []) + args.note))
    default_width = STUDENT["arch_args"]["width"]
    results.update(teacher=teacher_info, machine=machine_info())
    results.setdefault("student", {**STUDENT, "params": count_params(build(STUDENT, data))})
    STUDENT["arch_args"] = {"width": args.student_width}
    student_info = {**STUDENT, "params": count_params(build(STUDENT, data))}
    suffix = "" if args.student_width == default_width else f"@w{args.student_width}"
    teacher_cache = {}
    for kind in kinds:
        runs = []
        for seed in seeds:
            run = run_kind(kind, seed, teacher, data, args, teacher_cache)
            runs.append(run)
            print(f"{kind} seed {seed}: test top-1 {run['test_top1']:.2f}% ({run['seconds']} s)", flush=True)
        results["kinds"][kind + (f"-{args.tag}" if args.tag else "") + suffix] = {
            "alpha": args.alpha if KINDS[kind]["kd"] else 0.0, "temperature": args.temperature, "student": student_info,
            "terms": KINDS[kind]["terms"], "epochs": args.epochs, "runs": runs, "summary": summarize(runs)}
        write_results(results)  # after every kind: a partial table survives an interrupted run
    results["commands"].append({"command": "python benchmarks/distill_kinds.py " + " ".join(sys.argv[1:]),
                                "kinds": kinds, "wall_seconds": round(time.perf_counter() - start, 1)})
    write_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
