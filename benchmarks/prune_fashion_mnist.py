"""Pruning benchmark on the full Fashion-MNIST (60,000 train / 10,000 test).

    python benchmarks/prune_fashion_mnist.py [--epochs 6] [--finetune-epochs 3]

A ResNet-20 student is trained, pruned with L1 importance to at most half its MACs
(channel counts rounded to multiples of 8), fine-tuned with knowledge distillation from
the unpruned model, and both are exported to int8 ONNX and benched side by side in one
bench call on the CPU provider at batch 1. Targets (issue "structured pruning"): top-1
loss at most 0.5 points; the pruned int8 model at least 1.5x faster than the unpruned
int8 model. Writes benchmarks/results/prune-fashion-mnist.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekd.bench import bench, format_table, machine_info, preprocess  # noqa: E402
from edgekd.data import load_splits, save_eval_set  # noqa: E402
from edgekd.distill import distill  # noqa: E402
from edgekd.export import model_metadata, to_onnx  # noqa: E402
from edgekd.models import build_model, count_macs, count_params  # noqa: E402
from edgekd.prune import channel_table, prune_channels  # noqa: E402
from edgekd.quantize import ptq  # noqa: E402
from edgekd.recipe import BenchConfig, DataConfig, DistillConfig, ExportConfig, QuantConfig, TeacherConfig  # noqa: E402
from edgekd.train import accuracy, cross_entropy_step, fit, to_tensor  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--arch", default="resnet20")
    args = parser.parse_args()
    torch.manual_seed(0)
    timings = {}

    splits = load_splits(DataConfig(name="fashion-mnist"), seed=0)
    spec = splits.spec
    shape = (spec.channels, spec.height, spec.width)
    t = {
        "train_x": to_tensor(splits.train_x, spec.mean, spec.std),
        "train_y": torch.from_numpy(splits.train_y.astype("int64")),
        "val_x": to_tensor(splits.val_x, spec.mean, spec.std),
        "val_y": torch.from_numpy(splits.val_y.astype("int64")),
    }
    test_x = to_tensor(splits.test_x, spec.mean, spec.std)
    test_y = torch.from_numpy(splits.test_y.astype("int64"))

    start = time.perf_counter()
    student = build_model(args.arch, in_channels=spec.channels, num_classes=spec.num_classes)
    fit(student, cross_entropy_step(student), **t, cfg=TeacherConfig(epochs=args.epochs, lr=0.003, augment=False),
        desc="train", progress=False)
    timings["train"] = time.perf_counter() - start
    before = {"params": count_params(student), "macs": count_macs(student, shape),
              "channels": channel_table(student), "test_top1_torch": accuracy(student, test_x, test_y)}
    print(f"unpruned: {before['params']} params, {before['macs']} MACs, test {before['test_top1_torch']:.2f}", flush=True)

    start = time.perf_counter()
    pruned = copy.deepcopy(student)
    prune_channels(pruned, input_shape=shape, ratio=0.6, importance="l1", round_to=8, steps=12,
                   target_macs=before["macs"] // 2)
    after_prune_top1 = accuracy(pruned, test_x, test_y)
    distill(pruned, student, **t, cfg=DistillConfig(epochs=args.finetune_epochs, lr=0.001, augment=False),
            progress=False)
    timings["prune_and_finetune"] = time.perf_counter() - start
    after = {"params": count_params(pruned), "macs": count_macs(pruned, shape), "channels": channel_table(pruned),
             "test_top1_before_finetune_torch": after_prune_top1, "test_top1_torch": accuracy(pruned, test_x, test_y)}
    print(f"pruned: {after['params']} params, {after['macs']} MACs, test {after['test_top1_torch']:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="edgekd-prune-bench-") as work:
        work = Path(work)
        eval_set = work / "eval.npz"
        save_eval_set(eval_set, splits.test_x, splits.test_y, spec)
        calib = to_tensor(splits.calib_x, spec.mean, spec.std).numpy()
        paths = []
        for name, model, summary in (("unpruned", student, before), ("pruned", pruned, after)):
            meta = model_metadata(stage=name, arch=args.arch, spec=spec, params=summary["params"], macs=summary["macs"])
            fp32 = work / f"{name}.fp32.onnx"
            to_onnx(model, fp32, input_shape=shape, metadata=meta, cfg=ExportConfig(), check_inputs=t["val_x"])
            int8 = work / f"{name}.int8.onnx"
            ptq(fp32, int8, calib_images=calib, cfg=QuantConfig(), metadata=meta, progress=False)
            paths += [fp32, int8]
        # one bench call: all four models measured side by side, same process, same load
        rows = bench(paths, eval_set=eval_set, cfg=BenchConfig(runs=500, min_seconds=3.0), progress=False)
    print(format_table(rows))
    by = {r.name: r for r in rows}
    speedup_int8 = by["unpruned.int8"].latency_ms["p50"] / by["pruned.int8"].latency_ms["p50"]
    drop = by["unpruned.int8"].top1 - by["pruned.int8"].top1
    drop_fp32 = by["unpruned.fp32"].top1 - by["pruned.fp32"].top1
    macs_ratio = before["macs"] / after["macs"]
    checks = {
        "MACs reduced >= 2x": (macs_ratio >= 2.0, f"{macs_ratio:.2f}x"),
        "top-1 loss <= 0.5 points (fp32, after KD fine-tune)": (drop_fp32 <= 0.5, f"{drop_fp32:+.2f} points"),
        "pruned int8 >= 1.5x faster than unpruned int8 (p50, batch 1, CPU)": (speedup_int8 >= 1.5, f"{speedup_int8:.2f}x"),
    }
    result = {
        "command": "python benchmarks/prune_fashion_mnist.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "arch": args.arch, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
        "seconds": timings, "unpruned": before, "pruned": after,
        "int8_top1_drop": drop, "fp32_top1_drop": drop_fp32,
        "models": [r.to_dict() for r in rows],
        "checks": {k: {"ok": ok, "value": v} for k, (ok, v) in checks.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prune-fashion-mnist.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    md = [
        "# Pruning on the full Fashion-MNIST",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, int8 CPU features {', '.join(m['int8_cpu_flags']) or 'none'}, "
        f"onnxruntime {m['onnxruntime']}. Wall time: train {timings['train']:.0f} s, prune + KD fine-tune "
        f"{timings['prune_and_finetune']:.0f} s.",
        "",
        f"{args.arch} trained {args.epochs} epochs (no augmentation), L1 channel pruning to <= 1/2 MACs "
        f"(round to 8), {args.finetune_epochs} epochs of KD fine-tuning from the unpruned model. Top-1 on the "
        f"10,000 test images, by ONNX Runtime; top-1 right after pruning, before fine-tuning: "
        f"{after_prune_top1:.2f}% (PyTorch).",
        "",
        "```",
        format_table(rows),
        "```",
        "",
        "| target | result | value |",
        "|---|---|---|",
        *[f"| {k} | {'pass' if ok else 'FAIL'} | {v} |" for k, (ok, v) in checks.items()],
        "",
    ]
    (RESULTS / "prune-fashion-mnist.md").write_text("\n".join(md))
    for k, (ok, v) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}: {v}")
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
