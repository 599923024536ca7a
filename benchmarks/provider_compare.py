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

import sys

import common
from common import RESULTS, Clock, command, write_results
from edgekd.api import bench
from edgekd.runtime.bench_output import to_markdown
from edgekd.runtime.session import provider_route


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--run-dir", default="runs/provider-compare", help="a default run (edgekd compress --out DIR)")
    parser.add_argument("--providers", default="cpu,openvino")
    common.add_numbers(parser, runs=1000, min_seconds=2.0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every provider (0: their default)")
    args = parser.parse_args()
    clock = Clock()
    routes = {name: provider_route(name) for name in args.providers.split(",")}  # a missing one ends it here
    options = {"openvino:num_of_threads": str(args.threads)} if args.threads and "openvino" in routes else {}
    report = bench(args.run_dir, provider=args.providers, runs=args.runs, min_seconds=args.min_seconds, warmup=50,
                   threads=[args.threads], provider_options=options)
    load = clock.load_average()
    report["benchmark"] = {"command": command(), "wall_seconds": clock.seconds(), "load_average": load,
                           "routes": routes}
    route_text = "; ".join(f"{n}: {r['kind']} ({r['package']}{', ' + r['device'] if r['device'] else ''})"
                           for n, r in routes.items())
    text = to_markdown(report["models"] + report["failed"], report["machine"], report["config"],
                       report.get("provider_ranking"))
    text = text.replace("# edgekd bench\n", (
        "# edgekd bench RUN_DIR --provider " + args.providers + "\n\n"
        f"Command: `{report['benchmark']['command']}` (wall time {report['benchmark']['wall_seconds']:.0f} s). "
        f"Providers: {route_text}. Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end: "
        "other work shared the machine; all results ran interleaved in one run, so the ratios hold better than the "
        "times.\n"), 1)
    write_results(RESULTS, "provider-compare", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
