"""Distillation in all its kinds on the full Fashion-MNIST: one student, alone and with each.

    python benchmarks/distill_kinds.py [--kinds alone,kd,fitnet,...] [--seeds 0,1,2] [--epochs 10]
        [--student-width 8] [--alpha 0.9] [--temperature 4] [--tag TAG]
        [--teacher-arch resnet20] [--teacher-epochs 15] [--no-teacher-augment] [--teacher-threads 2]
        [--work /tmp/edgekd-distill-kinds]

One teacher is trained once on the 54,000 training images (6,000 held out for validation)
and saved in --work; later invocations reuse it. Then the same small student (TinyCNN)
is trained for --epochs with each kind of knowledge and each scheme, from the same
initialization per seed (torch.manual_seed(1000 + seed)), and evaluated on the 10,000 test
images. Every student run uses one torch thread, so two invocations can share 2 cores.

    alone       cross-entropy on the labels, no teacher: the baseline
    kd          Hinton KD from the teacher (--alpha, --temperature)
    fitnet      FitNets hint on the last stage's features (1x1 regressor), labels
    kd+fitnet   both
    at          attention transfer on the last two stages, labels
    rkd         relational KD (distance and angle) on the penultimate embeddings, labels
    sp          similarity-preserving KD on the last stage, labels
    dml         deep mutual learning: 2 peers of the student, no teacher (T 1, alpha 0.5
                as Zhang et al.); the best peer on val is the student
    born-again  generation 1 = the 'kd' row's training, generation 2 = a fresh student
                distilled from generation 1 (KD only); the best generation on val
    ema         KD from an exponential moving average of the student itself, no teacher

The feature and relation terms use the weights of the papers' reference code (FitNet 1,
AT 1000, RKD 25/50, SP 3000), untuned. Teacher outputs (and the features the terms read)
are computed once and shared by every seed and kind: the inputs are not augmented.

Results: benchmarks/results/distill-kinds.json, one row per kind (keyed 'kind[-TAG][@wWIDTH]'),
and the Markdown table distill-kinds.md rebuilt from all rows. A row's seeds that an earlier
invocation with the same settings finished are kept and not rerun; two invocations with
different kinds may run at the same time (each merges its rows into the file as it is when
it writes). Rows of another teacher are not mixed in: a new teacher starts a new file.
Target (issue #3): the best distilled student beats the student alone by at least 0.5
points mean top-1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import common
from common import RESULTS, command, machine_info, machine_line, split_tensors, table
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.distill import offline as distill_module
from edgekd.distill.config import DistillConfig
from edgekd.io.artifacts import load_weights, save_weights
from edgekd.models.cost import count_params
from edgekd.models.zoo import build_model
from edgekd.train.config import TeacherConfig
from edgekd.train.evaluate import accuracy
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData

RESULTS_JSON = RESULTS / "distill-kinds.json"
STUDENT_ARCH = "tinycnn"
# Student layers the terms read: TinyCNN features.2 / features.4 (the last two stages,
# 2w x 14x14 and 4w x 7x7); the teacher's are the ends of its last two stages (teacher_layers).
KINDS = ("alone", "kd", "fitnet", "kd+fitnet", "at", "rkd", "sp", "dml", "born-again", "ema")
WITH_KD = {"kd", "kd+fitnet", "born-again"}  # the kinds whose loss has the KD term (--alpha)


def teacher_layers(teacher) -> tuple[str, str]:
    """The modules that end a CIFAR ResNet's second and third stages (layers.{2n-1}, layers.{3n-1})."""
    per_stage = len(teacher.layers) // 3
    return f"layers.{2 * per_stage - 1}", f"layers.{3 * per_stage - 1}"


def terms_of(kind: str, teacher) -> list[dict]:
    mid, last = teacher_layers(teacher)
    fitnet = {"kind": "fitnet", "student": "features.4", "teacher": last, "weight": 1.0}
    return {
        "fitnet": [fitnet],
        "kd+fitnet": [fitnet],
        "at": [{"kind": "at", "student": ["features.2", "features.4"], "teacher": [mid, last], "weight": 1000.0}],
        "rkd": [{"kind": "rkd", "distance": 25.0, "angle": 50.0}],
        "sp": [{"kind": "sp", "student": "features.4", "teacher": last, "weight": 3000.0}],
    }.get(kind, [])


def settings_of(kind: str, args, teacher) -> dict:
    """Everything about a row's training that is not the seed: equal settings -> reusable seeds."""
    soft = kind in WITH_KD or kind == "ema"  # the kinds with a softened-output term (--temperature)
    settings = {"epochs": args.epochs, "augment_views": args.augment_views, "width": args.student_width,
                "batch_size": 128, "lr": 0.01,
                "alpha": args.alpha if kind in WITH_KD else 0.0, "temperature": args.temperature if soft else 4.0,
                "terms": terms_of(kind, teacher)}
    if kind == "dml":
        settings.update(scheme="online", peers=2, temperature=1.0, alpha=0.5)
    elif kind == "born-again":
        settings.update(scheme="born-again", generations=2)
    elif kind == "ema":
        settings.update(scheme="ema", ema_decay=0.999, alpha=0.5)
    return settings


def load_data():
    splits = load_splits(DataConfig(name="fashion-mnist"), seed=0)
    return {**split_tensors(splits, "train", "val", "test"), "classes": splits.spec.num_classes,
            "channels": splits.spec.channels}


def augmented_pool(data: dict, views: int) -> dict:
    """`views` fixed random crop + flip copies of the training images (edgekd.train.augment_batch,
    seed 0), labels repeated: the student trains on them for epochs / views passes, i.e. as many
    steps as --epochs over the plain images. Fixed views let the teacher's outputs be computed
    once for every kind and seed (an augmented run would otherwise run the teacher at each step),
    and the student sees the teacher's outputs on inputs other than the 54,000 it was trained on."""
    from edgekd.train.augment import augment_batch

    generator = torch.Generator().manual_seed(0)
    views_x = [augment_batch(data["train_x"], generator) for _ in range(views)]
    return {**data, "train_x": torch.cat(views_x), "train_y": data["train_y"].repeat(views)}


def build(arch: str, data: dict, **arch_args):
    return build_model(arch, in_channels=data["channels"], num_classes=data["classes"], **arch_args)


def trained_teacher(data: dict, args):
    """The teacher from --work, trained there first (with --teacher-threads) if it is not there."""
    work = Path(args.work)
    weights, info_file = work / "teacher.safetensors", work / "teacher.json"
    if weights.is_file() and info_file.is_file():
        info = json.loads(info_file.read_text())
        teacher = build(info["arch"], data, **info.get("arch_args", {}))
        load_weights(teacher, weights)
        print(f"teacher reused from {weights} (trained by: {info['command']})", flush=True)
        return teacher.eval(), info
    torch.manual_seed(0)
    teacher = build(args.teacher_arch, data)
    cfg = TeacherConfig(arch=args.teacher_arch, epochs=args.teacher_epochs, batch_size=128, lr=0.003,
                        augment=args.teacher_augment)
    train = {k: data[k] for k in ("train_x", "train_y", "val_x", "val_y")}
    start = time.perf_counter()
    torch.set_num_threads(args.teacher_threads)
    result = fit(teacher, cross_entropy_step(teacher), TrainData.of(**train), cfg,
                 RunOptions(seed=0, desc="teacher", progress=True))
    torch.set_num_threads(1)
    info = {
        "arch": args.teacher_arch, "arch_args": {}, "epochs": args.teacher_epochs, "augment": args.teacher_augment,
        "threads": args.teacher_threads, "params": count_params(teacher),
        "val_top1": result.best_val_top1, "test_top1": accuracy(teacher, data["test_x"], data["test_y"]),
        "train_seconds": round(time.perf_counter() - start, 1),
        "command": command(),
    }
    work.mkdir(parents=True, exist_ok=True)
    save_weights(teacher, weights)
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    print(f"teacher: test top-1 {info['test_top1']:.2f}% in {info['train_seconds']} s", flush=True)
    return teacher.eval(), info


def run_kind(kind: str, seed: int, settings: dict, teacher, data: dict, teacher_cache: dict) -> dict:
    """Train the student of one seed with one kind; its test top-1 and what the scheme measured."""
    from edgekd.distill import schemes
    from edgekd.distill.offline import distill

    cfg_fields = {k: v for k, v in settings.items() if k not in ("width", "augment_views", "epochs")}
    views = settings["augment_views"]
    cfg = DistillConfig(arch=STUDENT_ARCH, arch_args={"width": settings["width"]}, augment=False,
                        epochs=settings["epochs"] // views if views else settings["epochs"], **cfg_fields)
    train = {k: data[k] for k in ("train_x", "train_y", "val_x", "val_y")}
    test = (data["test_x"], data["test_y"])

    def student(init_seed: int):
        torch.manual_seed(init_seed)
        return build(STUDENT_ARCH, data, width=settings["width"])

    first = student(1000 + seed)  # the same initialization for every kind
    run = RunOptions(seed=seed, progress=False)
    start = time.perf_counter()
    extra: dict = {}
    if kind == "dml":
        peers = [first, student(2000 + seed)]
        outcome = schemes.mutual_learning(peers, TrainData.of(**train), cfg, run)
        final, extra = outcome.student, {**outcome.details, "peers_test_top1": [accuracy(p, *test) for p in peers]}
    elif kind == "born-again":
        generations = [first]

        def fresh(k):
            generations.append(student(1000 + seed + 100 * k))
            return generations[-1]

        outcome = schemes.born_again(first, teacher, TrainData.of(**train), cfg, run, make_student=fresh,
                                     teacher_cache=teacher_cache)
        final = outcome.student
        extra = {**outcome.details, "generations_test_top1": [accuracy(g, *test) for g in generations]}
    elif kind == "ema":
        outcome = schemes.ema_self_distill(first, TrainData.of(**train), cfg, run)
        final, extra = outcome.student, outcome.details
    else:  # offline: alone (alpha 0, no terms: plain cross-entropy) and the teacher's kinds
        distill(first, teacher, TrainData.of(**train), cfg, run, teacher_cache=teacher_cache)
        final = first
    return {"seed": seed, "test_top1": accuracy(final, *test), "val_top1": accuracy(final, data["val_x"], data["val_y"]),
            "seconds": round(time.perf_counter() - start, 1), **extra}


def summarize(runs: list[dict]) -> dict:
    values = [r["test_top1"] for r in runs]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def merge_and_write(results: dict, mine: dict, invocation: dict) -> None:
    """Write `results` with this invocation's rows (`mine`) and command merged into the file
    as it is now: another invocation may have added or extended rows since this one started."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if RESULTS_JSON.is_file():
        on_disk = json.loads(RESULTS_JSON.read_text())
        if on_disk.get("teacher") == results["teacher"]:
            results["rows"] = on_disk.get("rows", {})
            results["commands"] = on_disk.get("commands", [])
            results["notes"] = list(dict.fromkeys(on_disk.get("notes", []) + results.get("notes", [])))
    commands = results["commands"]
    where = [i for i, c in enumerate(commands) if c["command"] == invocation["command"]]
    if where:  # the same command run again (e.g. to finish its seeds): its entry is updated in place
        commands[where[0]] = invocation
    else:
        commands.append(invocation)
    results["rows"].update(mine)
    results["rows"] = dict(sorted(results["rows"].items(), key=lambda kv: row_order(kv[0])))
    tmp = RESULTS_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULTS_JSON)
    (RESULTS / "distill-kinds.md").write_text(markdown(results))


def base_kind(key: str) -> str:
    name = key.partition("@")[0]
    return next((k for k in sorted(KINDS, key=len, reverse=True) if name == k or name.startswith(k + "-")), name)


def row_order(key: str):
    kind = base_kind(key)
    return key.partition("@")[2], KINDS.index(kind) if kind in KINDS else len(KINDS), key


def markdown(results: dict) -> str:
    rows, teacher, machine = results["rows"], results["teacher"], results["machine"]

    def group(key: str) -> tuple:  # a row is compared with the 'alone' row of the same width, epochs and data
        st = rows[key]["settings"]
        return st["width"], st["epochs"], st.get("augment_views", 0)

    alone = {group(k): r["summary"]["mean"] for k, r in rows.items() if base_kind(k) == "alone"}
    md = [
        "# Distillation kinds and schemes on Fashion-MNIST",
        "",
        "Written by `benchmarks/distill_kinds.py` (its docstring describes each kind). Full Fashion-MNIST: "
        "54,000 train / 6,000 val (split seed 0) / 10,000 test images; test top-1 of the student each run keeps "
        "(the best epoch on val; for DML the best peer, for born-again the best generation).",
        "",
        f"Teacher: {teacher['arch']} ({teacher['params']:,} params), {teacher['epochs']} epochs"
        f"{' with random crop + flip' if teacher.get('augment') else ''}, test top-1 **{teacher['test_top1']:.2f}%** "
        f"(val {teacher['val_top1']:.2f}%), trained in {teacher['train_seconds']} s with {teacher.get('threads', 1)} "
        f"thread(s) by `{teacher['command']}`.",
        "",
        "Student: TinyCNN of the row's width (three conv-BN-ReLU layers, widths w, 2w, 4w), AdamW lr 0.01, "
        "one-cycle schedule, batch 128, the same initialization per seed for every kind. Epochs count passes "
        "over 54,000 images: 'on K views' rows train on K fixed random crop + flip copies of the training "
        "images (epochs / K passes over the copies, the same number of steps), the other rows on the plain images.",
        "",
    ]
    cells = []
    for key, row in rows.items():
        st, s = row["settings"], row["summary"]
        base = alone.get(group(key))
        delta = "" if base_kind(key) == "alone" else ("(no alone row)" if base is None else f"{s['mean'] - base:+.2f}")
        how = ", ".join(t["kind"] for t in st["terms"]) or "-"
        if "scheme" in st:
            how = {"online": lambda st=st: f"online, {st['peers']} peers",
                   "born-again": lambda st=st: f"born-again, {st['generations']} generations",
                   "ema": lambda st=st: f"ema, decay {st['ema_decay']}"}[st["scheme"]]()
        alpha, temperature = (st["alpha"], st["temperature"]) if st["alpha"] > 0 else (0.0, "-")
        seconds = statistics.mean(r["seconds"] for r in row["runs"])
        views = f" on {st['augment_views']} views" if st.get("augment_views") else ""
        cells.append([key, f"w{st['width']} ({row['student_params']:,})", alpha, temperature, how,
                      f"{st['epochs']}{views}", f"{s['mean']:.2f} ± {s['std']:.2f}", delta, s["n"], f"{seconds:.0f}"])
    md += table(["kind", "student", "alpha", "T", "terms / scheme", "epochs", "test top-1 % (mean ± std)", "vs alone",
                 "seeds", "s per run"], "llllllllll", cells)
    md += ["", "Every run (seed, val and test top-1, seconds, each peer's / generation's accuracy) is in "
           "distill-kinds.json.", ""]
    for (width, epochs, views), base in sorted(alone.items()):
        distilled = {k: r["summary"]["mean"] for k, r in rows.items()
                     if group(k) == (width, epochs, views) and base_kind(k) != "alone" and r["summary"]["n"] >= 3}
        if not distilled:
            continue
        best = max(distilled, key=distilled.get)
        gain = distilled[best] - base
        data_kind = f"{views} augmented views" if views else "the plain training images"
        md += [f"Target (best distilled student >= alone + 0.5 points mean top-1, 3 seeds), width {width}, "
               f"{epochs} epochs on {data_kind}: **{'met' if gain >= 0.5 else 'NOT met'}** - best '{best}' "
               f"{distilled[best]:.2f} ± {rows[best]['summary']['std']:.2f}% vs alone {base:.2f}% ({gain:+.2f} points).", ""]
    for note in results.get("notes", []):
        md += [note, ""]
    md += [
        "Commands (rows are merged from these invocations, newest last):",
        "",
        *[f"- `{c['command']}` ("
          + (f"{c['wall_seconds']} s wall, " if c.get("wall_seconds") is not None else "")
          + f"kinds {', '.join(c['kinds'])}"
          + ("" if c.get("finished", True) else "; stopped early: its rows have the seeds it finished") + ")"
          for c in results["commands"]],
        "",
        machine_line(machine, "os") + f"; torch {torch.__version__}, one "
        "thread per student run. Seconds per run include computing the teacher's cached outputs once per invocation "
        "and waiting for the CPU when two invocations ran side by side.",
        "",
    ]
    return "\n".join(md)


def main() -> int:
    global RESULTS, RESULTS_JSON
    parser = common.argument_parser(__doc__)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from: {', '.join(KINDS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs (per peer / generation)")
    parser.add_argument("--student-width", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term in the kinds that have it")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--augment-views", type=int, default=0,
                        help="train every student on this many fixed augmented copies of the training images "
                             "(--epochs must be a multiple); 0: the plain images")
    parser.add_argument("--tag", default="", help="rows keyed 'kind-TAG' (other settings of the same kind)")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for the results file (repeatable)")
    parser.add_argument("--teacher-arch", default="resnet20", help="a zoo architecture (CIFAR ResNet)")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--teacher-augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random crop + flip while training the teacher")
    parser.add_argument("--teacher-threads", type=int, default=2, help="torch threads for training the teacher")
    parser.add_argument("--work", default="/tmp/edgekd-distill-kinds", help="where the teacher is kept")
    parser.add_argument("--results", default=str(RESULTS), help="where distill-kinds.json and .md go")
    args = parser.parse_args()
    RESULTS, RESULTS_JSON = Path(args.results), Path(args.results) / "distill-kinds.json"
    torch.set_num_threads(1)  # two invocations can share 2 cores
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; available: {', '.join(KINDS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    data = load_data()
    teacher, teacher_info = trained_teacher(data, args)
    if not kinds:
        return 0
    if args.augment_views:
        if args.epochs % args.augment_views:
            parser.error("--epochs must be a multiple of --augment-views")
        data = augmented_pool(data, args.augment_views)
        distill_module.TEACHER_CACHE_BYTES = 8 << 30  # the pool's teacher features: cached, not recomputed
    saved = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    if saved.get("teacher") != teacher_info:
        if saved:
            print("note: another teacher produced the existing rows; starting a new results file", flush=True)
        saved = {}
    results = {"teacher": teacher_info, "machine": machine_info(), "rows": saved.get("rows", {}),
               "commands": saved.get("commands", []), "notes": list(dict.fromkeys(saved.get("notes", []) + args.note))}
    invocation = {"command": command(), "kinds": kinds,
               "wall_seconds": 0.0, "finished": False}
    mine: dict = {}  # the rows this invocation writes
    params = count_params(build(STUDENT_ARCH, data, width=args.student_width))
    suffix = f"{'-aug' + str(args.augment_views) if args.augment_views else ''}{'-' + args.tag if args.tag else ''}" \
             f"@w{args.student_width}"
    teacher_cache: dict = {}
    for kind in kinds:
        key = kind + suffix
        settings = settings_of(kind, args, teacher)
        earlier = results["rows"].get(key, {})
        runs = list(earlier.get("runs", [])) if earlier.get("settings") == settings else []
        for seed in seeds:
            if any(r["seed"] == seed for r in runs):  # an earlier invocation finished it: kept
                continue
            run = run_kind(kind, seed, settings, teacher, data, teacher_cache)
            runs.append(run)
            print(f"{key} seed {seed}: test top-1 {run['test_top1']:.2f}% ({run['seconds']} s)", flush=True)
            # after every run: an interrupted invocation leaves the seeds it finished
            mine[key] = {"settings": settings, "student_params": params, "runs": runs,
                                    "summary": summarize(runs)}
            invocation["wall_seconds"] = round(time.perf_counter() - start, 1)
            merge_and_write(results, mine, invocation)
    invocation["finished"] = True
    invocation["wall_seconds"] = round(time.perf_counter() - start, 1)
    merge_and_write(results, mine, invocation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
