"""Transfer learning on real data: Fashion-MNIST classes 0-4 -> classes 5-9 with 1,000 labels.

    python benchmarks/transfer_learning.py [--seeds 0,1,2] [--pretrain-epochs 4] [--head-epochs 10]
                                           [--finetune-epochs 20] [--work /tmp/edgekd-transfer]

1. Pretrain a ResNet-8 on every training image of classes 0-4 (T-shirt, Trouser,
   Pullover, Dress, Coat: 30,000 images; 10% of them held out for picking the best epoch).
   Saved in --work as safetensors and reused by a later invocation.
2. For each seed, draw 1,000 labelled images of classes 5-9 (Sandal, Shirt, Sneaker, Bag,
   Ankle boot), 200 per class; 800 train the model, 200 pick its best epoch (val).
3. Transfer with edgekd.transfer.transfer (the code path of `teacher.transfer` in a
   recipe): new head, head-only phase with the backbone frozen, then fine-tuning of all
   layers at a tenth of the learning rate.
4. The same architecture trained from scratch on the same 800 + 200 images, for as many
   epochs as both transfer phases together, at two learning rates.
5. Top-1 on all 5,000 test images of classes 5-9, after each phase and from scratch.

Results: benchmarks/results/transfer-learning.md and .json. Every run uses one torch thread.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common
from common import RESULTS, command, machine_info, machine_line, table, write_results
from edgekd.data.splits import channel_mean_std, load_arrays
from edgekd.io.artifacts import save_weights
from edgekd.models.cost import count_params
from edgekd.models.zoo import build_model
from edgekd.train.config import TeacherConfig, TransferConfig
from edgekd.train.evaluate import accuracy
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData
from edgekd.train.tensors import to_tensor
from edgekd.train.transfer import transfer

ARCH = "resnet8"
SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
PER_CLASS, VAL_PER_CLASS = 200, 40  # 1,000 labelled images: 800 train + 200 val
BATCH = 64
HEAD_LR, FINETUNE_LR = 0.01, 0.001
SCRATCH_LRS = (0.003, 0.01)


def tensors(x, y, classes, mean, std):
    keep = np.isin(y, classes)
    labels = torch.from_numpy(np.searchsorted(classes, y[keep]).astype(np.int64))  # 5..9 -> 0..4
    return to_tensor(x[keep], mean, std), labels


def pretrained(train_x, train_y, mean, std, work: Path, epochs: int) -> tuple[Path, dict]:
    weights, info_file = work / "pretrained-classes-0-4.safetensors", work / "pretrained.json"
    if weights.is_file() and info_file.is_file():
        print(f"pretrained backbone reused from {weights}", flush=True)
        return weights, json.loads(info_file.read_text())
    x, y = tensors(train_x, train_y, SOURCE_CLASSES, mean, std)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[: len(x) // 10], order[len(x) // 10:]
    torch.manual_seed(0)
    model = build_model(ARCH, in_channels=1, num_classes=len(SOURCE_CLASSES))
    cfg = TeacherConfig(arch=ARCH, epochs=epochs, batch_size=128, lr=0.003, augment=False)
    start = time.perf_counter()
    result = fit(model, cross_entropy_step(model), TrainData.of(x[train], y[train], x[val], y[val]), cfg,
                 RunOptions(seed=0, desc="pretrain", progress=False))
    info = {"classes": list(SOURCE_CLASSES), "images": len(x), "train": len(train), "val": len(val),
            "epochs": epochs, "val_top1": result.best_val_top1, "seconds": round(time.perf_counter() - start, 1)}
    work.mkdir(parents=True, exist_ok=True)
    save_weights(model, weights)
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    print(f"pretrained on classes 0-4: val top-1 {info['val_top1']:.2f}% in {info['seconds']} s", flush=True)
    return weights, info


def labelled_subset(x, y, seed: int):
    """200 images per class, the first 40 of each class for val: balanced, fixed by the seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(len(TARGET_CLASSES)):
        picked = rng.choice(np.flatnonzero(y.numpy() == c), size=PER_CLASS, replace=False)
        val.extend(picked[:VAL_PER_CLASS])
        train.extend(picked[VAL_PER_CLASS:])
    train, val = torch.tensor(sorted(train)), torch.tensor(sorted(val))
    return {"train_x": x[train], "train_y": y[train], "val_x": x[val], "val_y": y[val]}


def run_seed(seed, weights, target, test, head_epochs, finetune_epochs) -> dict:
    data = labelled_subset(*target, seed)
    out = {"seed": seed}
    torch.manual_seed(seed)
    model = build_model(ARCH, in_channels=1, num_classes=len(TARGET_CLASSES))
    cfg = TeacherConfig(arch=ARCH, epochs=finetune_epochs, batch_size=BATCH, lr=HEAD_LR, augment=True,
                        transfer=TransferConfig(pretrained=str(weights), head_epochs=head_epochs,
                                                finetune_lr=FINETUNE_LR))
    start = time.perf_counter()
    phase = {}

    def log(line):  # test accuracy after each phase: read the model as the phase leaves it
        if "phase 1" in line:
            phase["head"] = accuracy(model, *test)
        print(f"  seed {seed}: {line}", flush=True)

    report = transfer(model, TrainData.of(**data), cfg, RunOptions(seed=seed, progress=False, log=log))
    out["transfer"] = {"test_top1_head": phase["head"], "test_top1_finetune": accuracy(model, *test),
                       "val_top1_head": report["val_top1_head"], "val_top1_finetune": report["val_top1_finetune"],
                       "seconds": round(time.perf_counter() - start, 1)}
    for lr in SCRATCH_LRS:
        torch.manual_seed(seed)
        scratch = build_model(ARCH, in_channels=1, num_classes=len(TARGET_CLASSES))
        scfg = TeacherConfig(arch=ARCH, epochs=head_epochs + finetune_epochs, batch_size=BATCH, lr=lr, augment=True)
        start = time.perf_counter()
        result = fit(scratch, cross_entropy_step(scratch), TrainData.of(**data), scfg,
                     RunOptions(seed=seed, desc="scratch", progress=False))
        out[f"scratch_lr{lr:g}"] = {"test_top1": accuracy(scratch, *test), "val_top1": result.best_val_top1,
                                    "seconds": round(time.perf_counter() - start, 1)}
    print(f"seed {seed}: {json.dumps(out)}", flush=True)
    return out


def mean_std(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def write(results: dict) -> None:
    s, p, m = results["summary"], results["pretrained"], results["machine"]
    rows = [("pretrained backbone + new head, head only (phase 1)", s["transfer_head"],
             f"{results['head_epochs']} epochs, lr {HEAD_LR}, backbone frozen"),
            ("... then all layers fine-tuned (phase 2)", s["transfer_finetune"],
             f"+{results['finetune_epochs']} epochs, lr {FINETUNE_LR}")]
    rows += [(f"from scratch, lr {lr:g}", s[f"scratch_lr{lr:g}"], f"{results['head_epochs'] + results['finetune_epochs']} epochs")
             for lr in SCRATCH_LRS]
    best_scratch = max(s[f"scratch_lr{lr:g}"]["mean"] for lr in SCRATCH_LRS)
    md = [
        "# Transfer learning: Fashion-MNIST classes 0-4 -> 5-9 with 1,000 labels",
        "",
        "Written by `benchmarks/transfer_learning.py`; command: `" + results["command"] + "`, "
        f"{results['wall_seconds']} s wall"
        + (f" (seeds {', '.join(map(str, results['reused_seeds']))} reused from the log of an earlier invocation "
           "with the same settings, which was stopped)" if results.get("reused_seeds") else "")
        + ("" if results.get("finished", True) else "; STOPPED before all seeds finished") + ".",
        "",
        f"Pretrained model: {ARCH} ({results['params']:,} params), trained {p['epochs']} epochs on all "
        f"{p['images']:,} training images of classes 0-4 ({p['train']:,} train / {p['val']:,} val, "
        f"val top-1 {p['val_top1']:.2f}%, {p['seconds']} s).",
        "",
        f"Target task: classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot), {PER_CLASS} labelled images per "
        f"class drawn with the seed ({PER_CLASS - VAL_PER_CLASS} train + {VAL_PER_CLASS} val per class; val picks "
        f"the best epoch). Test: all {results['test_images']:,} test images of classes 5-9. Batch {BATCH}, "
        "AdamW, one-cycle schedule, random crop + flip augmentation for every model. The transfer rows run "
        "`edgekd.transfer.transfer`, the code behind `teacher.transfer` in a recipe.",
        "",
        *table(["model", f"test top-1 % (mean ± std, {s['transfer_head']['n']} seeds)", "vs best from scratch",
                "training"], "llll",
               [[name, f"{stat['mean']:.2f} ± {stat['std']:.2f}", f"{stat['mean'] - best_scratch:+.2f}", how]
                for name, stat, how in rows]),
    ]
    md += ["", "Per seed (test top-1 %):", "",
           *table(["seed", "head only", "fine-tuned", *(f"scratch lr {lr:g}" for lr in SCRATCH_LRS)],
                  "lll" + "l" * len(SCRATCH_LRS),
                  [[r["seed"], f"{r['transfer']['test_top1_head']:.2f}", f"{r['transfer']['test_top1_finetune']:.2f}",
                    *(f"{r[f'scratch_lr{lr:g}']['test_top1']:.2f}" for lr in SCRATCH_LRS)] for r in results["runs"]])]
    gain = s["transfer_finetune"]["mean"] - best_scratch
    md += ["", f"Fine-tuned transfer vs the best from-scratch row: {gain:+.2f} points mean top-1 "
           f"({'transfer is better' if gain > 0 else 'transfer is NOT better'} in this setting). The source "
           "classes are upper-body garments, trousers and dresses; the target classes are footwear, bags and "
           "shirts, so only part of the features carry over (see the head-only row)."]
    md += ["", machine_line(m, "os") + f"; torch {torch.__version__} with 1 thread. "
           "Other jobs shared the CPU during the run, so seconds are indicative only.", ""]
    write_results(RESULTS, "transfer-learning", results, "\n".join(md))


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    common.add_numbers(parser, pretrain_epochs=4, head_epochs=10, finetune_epochs=20)
    parser.add_argument("--work", default="/tmp/edgekd-transfer")
    parser.add_argument("--reuse-log", help="log of an earlier invocation with the same settings: reuse its seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    train_x, train_y, test_x, test_y, _ = load_arrays("fashion-mnist")
    # the pretrained model's normalization (from its own training images) is kept for the new task
    mean, std = channel_mean_std(train_x[np.isin(train_y, SOURCE_CLASSES)])
    weights, info = pretrained(train_x, train_y, mean, std, Path(args.work), args.pretrain_epochs)
    target = tensors(train_x, train_y, TARGET_CLASSES, mean, std)
    test = tensors(test_x, test_y, TARGET_CLASSES, mean, std)
    reused = reused_seeds(args.reuse_log) if args.reuse_log else {}
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    for seed in seeds:
        runs.append(reused.get(seed) or run_seed(seed, weights, target, test, args.head_epochs, args.finetune_epochs))
        # after every seed: an interrupted invocation leaves the seeds it finished
        summary = {"transfer_head": mean_std([r["transfer"]["test_top1_head"] for r in runs]),
                   "transfer_finetune": mean_std([r["transfer"]["test_top1_finetune"] for r in runs])}
        for lr in SCRATCH_LRS:
            summary[f"scratch_lr{lr:g}"] = mean_std([r[f"scratch_lr{lr:g}"]["test_top1"] for r in runs])
        results = {"command": command(),
                   "wall_seconds": round(time.perf_counter() - start, 1), "finished": len(runs) == len(seeds),
                   "reused_seeds": sorted(s for s in reused if s in seeds), "machine": machine_info(), "arch": ARCH,
                   "params": count_params(build_model(ARCH, in_channels=1, num_classes=5)), "pretrained": info,
                   "head_epochs": args.head_epochs, "finetune_epochs": args.finetune_epochs,
                   "test_images": len(test[1]), "summary": summary, "runs": runs}
        write(results)
    print(json.dumps(summary, indent=1))
    return 0


def reused_seeds(log_file: str) -> dict:
    """The per-seed results ('seed N: {...}' lines) that an earlier invocation with the same
    settings printed, so that an interrupted run need not repeat its finished seeds."""
    import re

    found = {}
    for line in Path(log_file).read_text().splitlines():
        match = re.match(r"seed (\d+): (\{.*\})$", line)
        if match:
            found[int(match.group(1))] = json.loads(match.group(2))
    return found


if __name__ == "__main__":
    sys.exit(main())
