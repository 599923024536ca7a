"""`edgekd bench RUN_DIR --provider cpu,openvino` on the default run, recorded with the machine.

    python benchmarks/provider_compare.py [--run-dir DIR] [--providers cpu,openvino] [--runs 1000] [--threads 1]

Benches every model of a default run (`edgekd compress --out DIR` makes one) on each
provider, all side by side in one interleaved run (edgekd.api.bench, the code of the
command): per-provider top-1, latency, node placement and fallbacks, failed results with
the provider's message, and the fastest provider per model (and the fastest within 0.5
top-1 points of the CPU provider). `--threads` applies to every provider (OpenVINO's
num_of_threads too): on a shared machine a multi-threaded inference waits for its threads to
be scheduled. Writes benchmarks/results/provider-compare.{md,json}.
OpenVINO needs the onnxruntime-ep-openvino plugin (Intel hardware) or onnxruntime-openvino.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekd.api import bench
from edgekd.runtime.fmt import to_markdown
from edgekd.runtime.session import provider_route

RESULTS = REPO / "benchmarks" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/provider-compare", help="a default run (edgekd compress --out DIR)")
    parser.add_argument("--providers", default="cpu,openvino")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every provider (0: their default)")
    args = parser.parse_args()
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    routes = {name: provider_route(name) for name in args.providers.split(",")}  # a missing one ends it here
    options = {"openvino:num_of_threads": str(args.threads)} if args.threads and "openvino" in routes else {}
    report = bench(args.run_dir, provider=args.providers, runs=args.runs, min_seconds=args.min_seconds, warmup=50,
                   threads=[args.threads], provider_options=options)
    command = "python " + " ".join(["benchmarks/provider_compare.py", *sys.argv[1:]])
    report["benchmark"] = {"command": command, "wall_seconds": time.perf_counter() - start,
                           "load_average": [load_start, os.getloadavg()[0]], "routes": routes}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "provider-compare.json").write_text(json.dumps(report, indent=2) + "\n")
    route_text = "; ".join(f"{n}: {r['kind']} ({r['package']}{', ' + r['device'] if r['device'] else ''})"
                           for n, r in routes.items())
    text = to_markdown(report["models"] + report["failed"], report["machine"], report["config"],
                       report.get("provider_ranking"))
    text = text.replace("# edgekd bench\n", (
        "# edgekd bench RUN_DIR --provider " + args.providers + "\n\n"
        f"Command: `{command}` (wall time {report['benchmark']['wall_seconds']:.0f} s). Providers: {route_text}. "
        f"Load average (1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: other work "
        "shared the machine; all results ran interleaved in one run, so the ratios hold better than the times.\n"), 1)
    (RESULTS / "provider-compare.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
