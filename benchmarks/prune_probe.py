"""Which student gets faster when pruned? A latency probe with random weights (no training).

    python benchmarks/prune_probe.py [--threads 1,2] [--rounds 15]

For each candidate student (zoo architecture and width) the unpruned model and a copy
pruned with L1 importance to at most 1/2 of its MACs (channel counts rounded to 16;
uniform and global) are exported to ONNX, quantized to int8 (U8S8 QDQ, the default
target), and timed side by side at batch 1 on ONNX Runtime's CPU provider: every round
runs each model a few times in turn, and the ratio is taken of the medians over all
rounds, so that load from other processes slows every model alike. Weights are random:
latency does not depend on their values. Writes benchmarks/results/prune-probe.{json,md}.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common
from common import RESULTS, command, machine_info, machine_line, table, write_results
from edgekd.models.cost import count_macs, count_params
from edgekd.models.zoo import build_model
from edgekd.prune.channels import PrunePlan, prune_channels
from edgekd.prune.latency import export_deployable, interleaved_p50_ms
from edgekd.runtime.config import BenchConfig

SHAPE = (1, 28, 28)  # Fashion-MNIST
CANDIDATES = [
    ("resnet20", {"width": 2}),
    ("resnet20", {"width": 3}),
    ("resnet20", {"width": 4}),
    ("tinycnn", {"width": 32}),
    ("tinycnn", {"width": 64}),
    ("mobilenetv2", {"width": 1.0, "last_channels": 1280}),
]


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default=None, help="comma list of indices into the candidate list")
    args = parser.parse_args()
    torch.set_num_threads(1)
    threads = [int(t) for t in args.threads.split(",")]
    picked = CANDIDATES if args.only is None else [CANDIDATES[int(i)] for i in args.only.split(",")]
    calib = np.random.default_rng(0).standard_normal((64, *SHAPE)).astype(np.float32)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekd-prune-probe-") as work:
        work = Path(work)
        for arch, arch_args in picked:
            torch.manual_seed(0)
            base = build_model(arch, in_channels=1, num_classes=10, **arch_args).eval()
            macs = count_macs(base, SHAPE)
            variants = {"unpruned": base}
            for mode in ("uniform", "global"):
                pruned = copy.deepcopy(base)
                plan = PrunePlan(ratio=0.75, importance="l1", round_to=16, steps=30, global_pruning=mode == "global",
                                 target_macs=macs // 2)
                prune_channels(pruned, plan, input_shape=SHAPE)
                variants[mode] = pruned
            tag = f"{arch}-{'-'.join(f'{k}{v}' for k, v in arch_args.items())}"
            paths = [export_deployable(m, work / f"{tag}-{name}", input_shape=SHAPE, calib_images=calib)[1]
                     for name, m in variants.items()]
            for t in threads:
                p50 = interleaved_p50_ms(paths, calib[0], BenchConfig(threads=t), rounds=args.rounds)
                for (name, m), ms in zip(variants.items(), p50):
                    row = {"arch": arch, "arch_args": arch_args, "variant": name, "threads": t,
                           "macs": count_macs(m, SHAPE), "params": count_params(m), "int8_p50_ms": ms,
                           "macs_ratio": macs / count_macs(m, SHAPE), "speedup": p50[0] / ms}
                    rows.append(row)
                    print(f"{tag:34s} {name:8s} t={t} MACs {row['macs']/1e6:7.2f}M ({row['macs_ratio']:.2f}x) "
                          f"int8 p50 {ms:.3f} ms speed-up {row['speedup']:.2f}x", flush=True)
    result = {"command": command(), "machine": machine_info(), "seconds": time.perf_counter() - start, "rows": rows}
    m = result["machine"]
    md = ["# Pruning latency probe (random weights, int8, batch 1, CPU provider)", "",
          f"Command: `{result['command']}`", "",
          machine_line(m, "int8", "onnxruntime") + "; other jobs shared the 2 cores. "
          f"Wall time {result['seconds']:.0f} s.", "",
          "Each model pruned (L1, channels rounded to 16) to at most 1/2 of its MACs; p50 is the median over "
          f"{args.rounds} interleaved rounds; speed-up is unpruned int8 p50 / this int8 p50 in the same loop.", "",
          *table(["arch", "args", "variant", "threads", "MACs", "MACs ratio", "int8 p50 ms", "speed-up"], "lllrrrrr",
                 [[r["arch"], json.dumps(r["arch_args"]), r["variant"], r["threads"], f"{r['macs'] / 1e6:.2f}M",
                   f"{r['macs_ratio']:.2f}x", f"{r['int8_p50_ms']:.3f}", f"{r['speedup']:.2f}x"] for r in rows]), ""]
    write_results(RESULTS, "prune-probe", result, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
