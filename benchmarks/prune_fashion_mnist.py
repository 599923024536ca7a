"""Pruning benchmark on the full Fashion-MNIST (60,000 train / 10,000 test).

    python benchmarks/prune_fashion_mnist.py [--epochs 3] [--finetune-epochs 2]

A TinyCNN-64 student (29 M MACs; picked by benchmarks/prune_probe.py, which found it the
cheapest zoo student that is compute-bound enough at 28x28 for fewer MACs to mean lower
int8 latency) is trained, then pruned with edgekd's latency-targeted pruning: L1
importance, 5 % of the channels per step, channel counts rounded to 16, each candidate
exported, quantized to int8 and timed against the unpruned int8 model in one interleaved
loop (1 thread, batch 1, CPU provider), until it is at least `--target-speedup` faster
and has at most 1/2 of the MACs. Then it is fine-tuned with knowledge distillation from
the unpruned model. Both are exported (fp32, int8) and measured side by side with
edgekd's bench: `--reps` bench calls over the four models, alternating, the median p50
of each model over the calls. Targets (issue "structured pruning"): >= 2x fewer MACs,
top-1 loss <= 0.5 points, pruned int8 >= 1.5x faster than unpruned int8.
Writes benchmarks/results/prune-fashion-mnist.{json,md}.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from common import RESULTS, command, machine_info, machine_line, split_tensors, table, write_results
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits, save_eval_set
from edgekd.distill.config import DistillConfig
from edgekd.distill.offline import distill
from edgekd.io.artifacts import load_weights, save_weights
from edgekd.models.cost import count_macs, count_params
from edgekd.models.zoo import build_model
from edgekd.onnx_export import ExportConfig, model_metadata
from edgekd.prune.channels import channel_table
from edgekd.prune.config import PruneConfig
from edgekd.prune.latency import Deployed, export_deployable, prune_to_latency
from edgekd.quant.config import QuantConfig
from edgekd.runtime.bench import bench
from edgekd.runtime.bench_output import format_table
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.machine import detect_machine
from edgekd.train.config import TeacherConfig
from edgekd.train.evaluate import accuracy
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData
from edgekd.train.tensors import to_tensor


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--arch", default="tinycnn")
    parser.add_argument("--width", type=float, default=64)
    common.add_numbers(parser, epochs=3, finetune_epochs=2)
    parser.add_argument("--target-speedup", type=float, default=1.5, help="latency target of the pruning loop")
    parser.add_argument("--bench-threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5, help="alternating bench calls over the four models")
    parser.add_argument("--limit-train", type=int, default=None, help="smoke tests only: fewer training images")
    parser.add_argument("--save-student", default=None, help="write the trained unpruned student here (.safetensors)")
    parser.add_argument("--student", default=None, help="load a trained unpruned student (.safetensors); no training")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch threads for training (1 when other jobs share the cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.train_threads)
    torch.manual_seed(0)
    wall = time.perf_counter()
    timings = {}
    arch_args = {"width": int(args.width) if args.arch == "tinycnn" else args.width}

    splits = load_splits(DataConfig(name="fashion-mnist", path="/usr/share/datasets/fashion-mnist",
                                     limit_train=args.limit_train), seed=0)
    spec = splits.spec
    shape = (spec.channels, spec.height, spec.width)
    t = split_tensors(splits, "train", "val")
    test_x, test_y = split_tensors(splits, "test").values()
    calib = to_tensor(splits.calib_x, spec.mean, spec.std).numpy()
    print(f"data: {len(t['train_x'])} train, {len(t['val_x'])} val, {len(test_x)} test", flush=True)

    start = time.perf_counter()
    student = build_model(args.arch, in_channels=spec.channels, num_classes=spec.num_classes, **arch_args)
    if args.student:  # to try other pruning / fine-tuning settings without training again
        load_weights(student, args.student)
        history = []
    else:
        history = fit(student, cross_entropy_step(student), TrainData.of(**t),
                      TeacherConfig(epochs=args.epochs, lr=0.003, augment=False),
                      RunOptions(desc="train", progress=False, log=lambda line: print(line, flush=True))).epochs
    if args.save_student:
        save_weights(student, args.save_student)
    timings["train"] = time.perf_counter() - start
    student.eval()
    before = {"params": count_params(student), "macs": count_macs(student, shape),
              "channels": channel_table(student), "test_top1_torch": accuracy(student, test_x, test_y),
              "epochs": history, "loaded_from": args.student}
    print(f"unpruned: {before['params']} params, {before['macs']} MACs, test {before['test_top1_torch']:.2f} "
          f"({timings['train']:.0f} s)", flush=True)

    start = time.perf_counter()
    pruned = copy.deepcopy(student)
    machine = detect_machine()
    quant_cfg = QuantConfig()
    prune_cfg = PruneConfig(target_speedup=args.target_speedup, ratio=0.6, latency_step=0.05, importance="l1",
                            round_to=16, latency_rounds=20, target_macs=before["macs"] // 2)
    deployed = Deployed(int8=True, quant_cfg=quant_cfg, bench=BenchConfig(threads=args.bench_threads))
    pruned, latency = prune_to_latency(pruned, input_shape=shape, cfg=prune_cfg, calib_images=calib, deployed=deployed,
                                       log=lambda line: print(line, flush=True))
    timings["prune_loop"] = time.perf_counter() - start
    after_prune_top1 = accuracy(pruned, test_x, test_y)
    start = time.perf_counter()
    ft = distill(pruned, student, TrainData.of(**t),
                 DistillConfig(epochs=args.finetune_epochs, lr=0.001, augment=False), RunOptions(progress=False, log=lambda line: print(line, flush=True)))
    timings["kd_finetune"] = time.perf_counter() - start
    pruned.eval()
    after = {"params": count_params(pruned), "macs": count_macs(pruned, shape), "channels": channel_table(pruned),
             "test_top1_before_finetune_torch": after_prune_top1, "test_top1_torch": accuracy(pruned, test_x, test_y),
             "finetune_epochs": ft.epochs}
    print(f"pruned: {after['params']} params, {after['macs']} MACs, test {after['test_top1_torch']:.2f}", flush=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekd-prune-bench-") as work:
        work = Path(work)
        eval_set = work / "eval.npz"
        save_eval_set(eval_set, splits.test_x, splits.test_y, spec)
        paths = []
        for name, model, summary in (("unpruned", student, before), ("pruned", pruned, after)):
            meta = model_metadata(stage=name, arch=args.arch, spec=spec, params=summary["params"], macs=summary["macs"])
            fp32, int8 = export_deployable(model, work / name, input_shape=shape, calib_images=calib,
                                           quant_cfg=quant_cfg, export_cfg=ExportConfig(), metadata=meta)
            paths += [fp32, int8]
        cfg = BenchConfig(runs=300, min_seconds=1.0, threads=args.bench_threads)
        # accuracy once (10,000 images per model), then latency-only calls, alternating the
        # model order, so that other jobs on the machine slow every model alike
        accuracy_rows = bench(paths, eval_set=eval_set, cfg=cfg, progress=False)
        p50s = {p.stem: [r.latency_ms["p50"]] for p, r in zip(paths, accuracy_rows)}
        for rep in range(1, args.reps):
            order = paths if rep % 2 == 0 else paths[::-1]
            for row in bench(order, cfg=cfg, progress=False):
                p50s[row.name].append(row.latency_ms["p50"])
    timings["bench"] = time.perf_counter() - start
    rows = accuracy_rows
    print(format_table(rows))
    median_p50 = {name: statistics.median(v) for name, v in p50s.items()}
    by = {r.name: r for r in rows}
    speedup_int8 = median_p50["unpruned.int8"] / median_p50["pruned.int8"]
    drop_fp32 = by["unpruned.fp32"].top1 - by["pruned.fp32"].top1
    drop_int8 = by["unpruned.int8"].top1 - by["pruned.int8"].top1
    macs_ratio = before["macs"] / after["macs"]
    checks = {
        "MACs reduced >= 2x": (macs_ratio >= 2.0, f"{macs_ratio:.2f}x"),
        "top-1 loss <= 0.5 points (fp32 ONNX, after KD fine-tune)": (drop_fp32 <= 0.5, f"{drop_fp32:+.2f} points"),
        "top-1 loss <= 0.5 points (int8 ONNX, after KD fine-tune)": (drop_int8 <= 0.5, f"{drop_int8:+.2f} points"),
        f"pruned int8 >= 1.5x faster than unpruned int8 (median p50 of {args.reps} bench calls, batch 1, "
        f"CPU, {args.bench_threads} thread)": (speedup_int8 >= 1.5, f"{speedup_int8:.2f}x"),
    }
    timings["total"] = time.perf_counter() - wall
    result = {
        "command": command(),
        "train_threads": args.train_threads,
        "machine": machine_info(), "quantize_machine": machine, "note": "other jobs shared the 2 CPU cores",
        "arch": args.arch, "arch_args": arch_args, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
        "seconds": timings, "unpruned": before, "pruned": after, "latency_pruning": latency.to_dict(),
        "int8_top1_drop": drop_int8, "fp32_top1_drop": drop_fp32,
        "p50_ms_per_bench_call": p50s, "median_p50_ms": median_p50,
        "models": [r.to_dict() for r in rows],
        "checks": {k: {"ok": ok, "value": v} for k, (ok, v) in checks.items()},
    }
    write_results(RESULTS, "prune-fashion-mnist", result, markdown(result, rows, checks, args, after_prune_top1))
    for k, (ok, v) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}: {v}")
    return 0 if all(ok for ok, _ in checks.values()) else 1


def markdown(result, rows, checks, args, after_prune_top1) -> str:
    m, s, lat = result["machine"], result["seconds"], result["latency_pruning"]
    steps = [[st["step"], f"{st['removed']:.2f}", f"{st['macs'] / 1e6:.2f}M", f"{st['params']:,}",
              f"{st['p50_ms']:.3f}", f"{st['reference_p50_ms']:.3f}", f"{st['speedup']:.2f}x"] for st in lat["steps"]]
    layers = [[name, result["unpruned"]["channels"][name], result["pruned"]["channels"][name]]
              for name in result["unpruned"]["channels"]]
    return "\n".join([
        "# Pruning on the full Fashion-MNIST",
        "",
        f"Command: `{result['command']}`",
        "",
        machine_line(m, "int8", "onnxruntime") + "; other jobs may have shared the 2 cores (training on "
        f"{result.get('train_threads', 1)} torch thread(s)). Wall time "
        f"{s['total']:.0f} s: train {s['train']:.0f} s, latency-targeted pruning {s['prune_loop']:.0f} s, "
        f"KD fine-tune {s['kd_finetune']:.0f} s, bench {s['bench']:.0f} s.",
        "",
        f"{args.arch} {json.dumps(result['arch_args'])} trained {args.epochs} epochs (no augmentation, AdamW, "
        "one-cycle), pruned by measured int8 latency (L1 importance, 5 % of the channels per step, round to 16, "
        f"target >= {args.target_speedup}x faster and <= 1/2 MACs), then {args.finetune_epochs} epochs of KD "
        "fine-tuning from the unpruned model. Top-1 on the 10,000 test images, by ONNX Runtime; right after "
        f"pruning, before fine-tuning: {after_prune_top1:.2f}% (PyTorch).",
        "",
        "Side-by-side bench (edgekd bench, batch 1; top-1 from the first call; p50 here is that call's):",
        "",
        "```",
        format_table(rows),
        "```",
        "",
        f"Median p50 (ms) over {args.reps} alternating bench calls: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["median_p50_ms"].items()) + ".",
        "",
        *table(["target", "result", "value"], "lll",
               [[k, "pass" if ok else "FAIL", v] for k, (ok, v) in checks.items()]),
        "",
        "## The latency-targeted pruning loop",
        "",
        f"{lat['message']}. Each candidate timed against the unpruned int8 model in one loop of interleaved rounds "
        "(medians):",
        "",
        *table(["step", "share removed", "MACs", "params", "int8 p50 ms", "unpruned int8 p50 ms", "speed-up"],
               "rrrrrrr", steps),
        "",
        "## Channels per layer",
        "",
        *table(["layer", "unpruned", "pruned"], "lrr", layers),
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
