"""Training speed and accuracy of the default teacher: fp32 NCHW against precision auto +
channels_last (issue #15, item 2), side by side in one run.

    python benchmarks/train_precision.py [--epochs 10] [--data fashion-mnist]

1. Throughput, interleaved: both settings' models and optimizers are built, then blocks of
   training steps of one and the other alternate (batch 128, the default teacher's), so a
   change in the shared host's speed hits both alike; the ratio is the median of the
   per-round ratios.
2. Accuracy: the default teacher (ResNet-8, the recipe's optimizer and schedule) trained
   with each setting from the same seed on the whole training split; test top-1 on the
   10,000 test images. For each of --seeds (0 1 2): one seed's gap mixes precision with the
   trajectory's luck (bf16 and fp32 part ways at the first step), so the check is on the
   mean of the per-seed gaps, each pair with the same seed and schedule.

Target: auto + channels_last at least 2x the fp32 img/s, mean test top-1 gap within 0.3 points.
Writes benchmarks/results/train-precision.{md,json} with the machine it ran on.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import common
from common import RESULTS, command, machine_info, machine_line, table, write_results

MIN_SPEEDUP = 2.0
MAX_TOP1_GAP = 0.3


def throughput(settings: dict, spec, batch: int, rounds: int, steps: int) -> dict:
    """img/s of each setting's training step, measured in alternating blocks."""
    import torch

    from edgekd.models.zoo import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, spec.channels, spec.height, spec.width, generator=gen)
    y = torch.randint(0, spec.num_classes, (batch,), generator=gen)
    runners = {}
    for name, compute in settings.items():
        torch.manual_seed(0)
        model = compute.model(build_model("resnet8", in_channels=spec.channels, num_classes=spec.num_classes))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        xb = compute.batch(x)

        def step(model=model, optimizer=optimizer, xb=xb, compute=compute):
            with compute.autocast():
                loss = torch.nn.functional.cross_entropy(model(xb), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
            step()
        runners[name] = step
    per_round = {name: [] for name in settings}
    for _ in range(rounds):
        for name, step in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            per_round[name].append(steps * batch / (time.perf_counter() - start))
    names = list(settings)
    ratios = [b / a for a, b in zip(per_round[names[0]], per_round[names[1]])]
    return {"img_per_s": {n: statistics.median(v) for n, v in per_round.items()},
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "rounds": rounds, "steps_per_round": steps, "batch": batch}


def train_and_test(compute, splits, epochs: int, seed: int) -> dict:
    import numpy as np
    import torch

    from edgekd.models.zoo import build_model
    from edgekd.pipeline.runstate import seed_everything
    from edgekd.train.compute import use
    from edgekd.train.config import TeacherConfig
    from edgekd.train.evaluate import accuracy
    from edgekd.train.loop import cross_entropy_step, fit
    from edgekd.train.plumbing import RunOptions, TrainData
    from edgekd.train.tensors import to_tensor

    spec = splits.spec
    seed_everything(seed)
    cfg = dataclasses.replace(TeacherConfig(), epochs=epochs)
    model = build_model(cfg.arch, in_channels=spec.channels, num_classes=spec.num_classes)
    t = {k: to_tensor(getattr(splits, k), spec.mean, spec.std) for k in ("train_x", "val_x", "test_x")}
    ty = {k: torch.from_numpy(getattr(splits, k).astype(np.int64)) for k in ("train_y", "val_y", "test_y")}
    with use(compute):  # what the chain does for a run: every fit and prediction computes this way
        data = TrainData.of(t["train_x"], ty["train_y"], t["val_x"], ty["val_y"])
        result = fit(model, cross_entropy_step(model), data, cfg,
                     RunOptions(seed=seed, desc=compute.precision, progress=False))
        test_top1 = accuracy(model, t["test_x"], ty["test_y"])
    return {"test_top1": test_top1,
            "val_top1": result.best_val_top1, "best_epoch": result.best_epoch,
            "train_seconds": result.seconds, "images_per_second": result.images_per_second}


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="each seed trains both settings (its own val split, same schedule); the check is on "
                             "the mean of the per-seed gaps, as one seed's gap is within the seed-to-seed spread")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()

    import torch

    from edgekd.data.config import DataConfig
    from edgekd.data.splits import load_splits
    from edgekd.train.compute import resolve

    settings = {"fp32 NCHW": resolve("cpu", "fp32", False), "auto + channels_last": resolve("cpu", "auto", "auto")}
    splits = load_splits(DataConfig(name=args.data), seed=args.seeds[0])
    start = time.perf_counter()
    speed = throughput(settings, splits.spec, batch=128, rounds=args.rounds, steps=10)
    names = list(settings)
    accuracy, gaps = {}, []
    for seed in [] if args.skip_accuracy else args.seeds:
        splits = load_splits(DataConfig(name=args.data), seed=seed)
        accuracy[seed] = {name: train_and_test(compute, splits, args.epochs, seed) for name, compute in settings.items()}
        gaps.append(accuracy[seed][names[1]]["test_top1"] - accuracy[seed][names[0]]["test_top1"])
        print(f"seed {seed}: gap {gaps[-1]:+.2f} points", flush=True)
    gap = statistics.mean(gaps) if gaps else None
    checks = {f"img/s ratio >= {MIN_SPEEDUP}": speed["ratio_median"] >= MIN_SPEEDUP}
    if gap is not None:
        checks[f"mean test top-1 gap within {MAX_TOP1_GAP} points"] = abs(gap) <= MAX_TOP1_GAP
    out = {"command": command(), "machine": machine_info(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "data": args.data,
           "train_images": len(splits.train_y), "test_images": len(splits.test_y), "epochs": args.epochs,
           "settings": {n: c.to_dict() for n, c in settings.items()}, "throughput": speed, "accuracy": accuracy,
           "top1_gap_points_per_seed": dict(zip(args.seeds, gaps)), "top1_gap_points_mean": gap, "checks": checks,
           "wall_seconds": time.perf_counter() - start}
    m = out["machine"]
    lines = ["# Training precision: fp32 NCHW vs auto + channels_last (issue #15)", "",
             f"Command: `{out['command']}`", "",
             machine_line(m) + f", torch {out['torch']} ({out['threads']} threads). "
             f"Settings: " + "; ".join(f"{n}: {c}" for n, c in out["settings"].items()) + ".", "",
             "## Throughput (default teacher ResNet-8, batch 128, interleaved blocks of 10 steps)", "",
             *table(["setting", "img/s (median)"], "lr", [[n, f"{v:,.0f}"] for n, v in speed["img_per_s"].items()])]
    lines += ["", f"Ratio: median {speed['ratio_median']:.2f}x (per round {speed['ratio_min']:.2f}-"
              f"{speed['ratio_max']:.2f}x over {speed['rounds']} rounds).", ""]
    if accuracy:
        lines += [f"## Accuracy ({args.data}, {out['train_images']:,} train / {out['test_images']:,} test images, "
                  f"{args.epochs} epochs, the same seed for both settings)", "",
                  *table(["seed", "setting", "test top-1 %", "best val top-1 %", "train s", "img/s in training"],
                         "rlrrrr", [[seed, n, f"{a['test_top1']:.2f}", f"{a['val_top1']:.2f}",
                                     f"{a['train_seconds']:.0f}", f"{a['images_per_second']:,.0f}"]
                                    for seed, runs in accuracy.items() for n, a in runs.items()])]
        spread = f" (std {statistics.stdev(gaps):.2f})" if len(gaps) > 1 else ""
        lines += ["", "Gap (auto minus fp32, test top-1): " + ", ".join(f"seed {s} {g:+.2f}" for s, g in
                                                                         zip(args.seeds, gaps))
                  + f"; mean {gap:+.2f} points{spread}."]
    lines += ["", "Checks: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()),
              f"Wall time: {out['wall_seconds']:.0f} s.", ""]
    write_results(RESULTS, "train-precision", out, "\n".join(lines))
    print("\n".join(lines))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
