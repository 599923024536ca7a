"""Compare an x86-64 and an emulated aarch64 `edgekd bench --json-out` of the same models
and eval set; write the result as Markdown + JSON (used by run_arm_bench.sh)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _by_name(report: dict) -> dict:
    return {m["name"]: m for m in report["models"]}


def summarize(x86: dict, arm: dict, args) -> dict:
    a, b = _by_name(x86), _by_name(arm)
    models = []
    for name in a:
        mx, ma = a[name], b.get(name)
        if ma is None:
            continue
        ref_x, ref_a = mx.get("reference") or {}, ma.get("reference") or {}
        models.append({
            "name": name, "stage": mx.get("stage"), "samples": mx["samples"],
            "top1_x86": mx["top1"], "top1_arm": ma["top1"], "top1_equal": mx["top1"] == ma["top1"],
            "top5_x86": mx["top5"], "top5_arm": ma["top5"],
            "vs_fp32_argmax_match_x86": ref_x.get("argmax_match"), "vs_fp32_argmax_match_arm": ref_a.get("argmax_match"),
            "vs_fp32_max_abs_diff_x86": ref_x.get("max_abs_diff"), "vs_fp32_max_abs_diff_arm": ref_a.get("max_abs_diff"),
            "int8_ops_x86": mx.get("int8_ops"), "int8_ops_arm": ma.get("int8_ops"),
            "provider_nodes_x86": mx.get("provider_nodes"), "provider_nodes_arm": ma.get("provider_nodes"),
            "p50_ms_x86": mx["latency_ms"]["p50"], "p50_ms_arm_emulated": ma["latency_ms"]["p50"],
        })
    return {
        "schema": "edgekd.arm-emulated/1",
        "command": args.command,
        "run_dir": args.run_dir,
        "eval_images": args.eval_limit,
        "wall_s": args.wall_s,
        "arm_wall_s": args.arm_wall_s,
        "all_top1_equal": bool(models) and all(m["top1_equal"] for m in models),
        "latency_note": "aarch64 latency is measured under qemu user-mode emulation and means nothing "
                        "about a real Arm device; it is kept only to show the run completed",
        "machine_x86": x86["machine"], "machine_arm": arm["machine"],
        "config": x86["config"],
        "models": models,
    }


def to_markdown(s: dict) -> str:
    mx, ma = s["machine_x86"], s["machine_arm"]
    fp32 = next((m for m in s["models"] if m["name"].endswith("fp32")), None)
    pace = "" if fp32 is None else (f" (emulated fp32 inference took {fp32['p50_ms_arm_emulated'] / 1000:.1f} s per "
                                    "image at batch 1)")
    subset = ("all" if s["eval_images"] >= 2000 else f"the first {s['eval_images']}")
    verdict = "equal" if s["all_top1_equal"] else "NOT equal"
    lines = [
        "# edgekd bench under aarch64 emulation",
        "",
        f"Command: `{s['command']}` (wall time {s['wall_s']} s, of which {s['arm_wall_s']} s emulated).",
        f"Models: `model.fp32.onnx` and `model.int8.onnx` of the default run (`{s['run_dir']}`), "
        f"on {subset} images of its 2,000-image `eval.npz`{pace}; both machines use the same images."
        + ("" if fp32 is None or s["eval_images"] >= 2000 else
           f" `EVAL_LIMIT=2000` runs the whole set (about {2000 * fp32['p50_ms_arm_emulated'] / 60000:.0f} min of "
           "emulated fp32 inference at this pace)."),
        "",
        f"- x86-64 (native): {mx['cpu']}, {mx['cores']} cores, {mx['os']}, Python {mx['python']}, "
        f"onnxruntime {mx['onnxruntime']}, int8 CPU features: {', '.join(mx['int8_cpu_flags']) or 'none'}.",
        f"- aarch64 (emulated): qemu-aarch64-static user mode, Debian arm64 python {ma['python']}, official "
        f"aarch64 onnxruntime {ma['onnxruntime']} wheel, machine `{ma['machine']}`, int8 CPU features "
        f"reported: {', '.join(ma['int8_cpu_flags']) or 'none'} (from the arm64-style /proc/cpuinfo bound over "
        "the host's).",
        f"- Settings on both: threads 1, {s['config']['warmup']} warm-up runs, {s['config']['runs']} timed runs.",
        "",
        f"**Top-1 accuracy: {verdict} on both machines for every model.**",
        "",
        "| model | top-1 % x86 | top-1 % arm | equal | top-5 % x86 | top-5 % arm | vs fp32 argmax match % x86 "
        "| arm | vs fp32 max abs diff x86 | arm | int8 kernels x86 | arm | p50 ms x86 | p50 ms arm (emulated, meaningless) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    for m in s["models"]:
        lines.append(
            f"| {m['name']} | {f(m['top1_x86'])} | {f(m['top1_arm'])} | {'yes' if m['top1_equal'] else 'NO'} | "
            f"{f(m['top5_x86'])} | {f(m['top5_arm'])} | {f(m['vs_fp32_argmax_match_x86'])} | "
            f"{f(m['vs_fp32_argmax_match_arm'])} | {f(m['vs_fp32_max_abs_diff_x86'], '.4g')} | "
            f"{f(m['vs_fp32_max_abs_diff_arm'], '.4g')} | {f(m['int8_ops_x86'], 'd')} | {f(m['int8_ops_arm'], 'd')} | "
            f"{f(m['p50_ms_x86'], '.3f')} | {f(m['p50_ms_arm_emulated'], '.1f')} |"
        )
    lines += [
        "",
        "The int8 model is compared with the fp32 one on each machine (edgekd bench does this by itself "
        "for a run directory). Latency on aarch64 " + s["latency_note"].split(" ", 2)[2] + ".",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite OUT.md from the existing OUT.json (after a change of this script's text)")
    for flag in ("--x86", "--arm", "--run-dir", "--command"):
        parser.add_argument(flag)
    for flag in ("--eval-limit", "--wall-s", "--arm-wall-s"):
        parser.add_argument(flag, type=int)
    args = parser.parse_args()
    out = Path(args.out)
    if args.markdown_only:
        s = json.loads(out.with_suffix(".json").read_text())
    else:
        s = summarize(json.loads(Path(args.x86).read_text()), json.loads(Path(args.arm).read_text()), args)
        out.with_suffix(".json").write_text(json.dumps(s, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(s))
    print(to_markdown(s))
    if not s["all_top1_equal"]:
        raise SystemExit("top-1 differs between x86-64 and aarch64: see " + str(out.with_suffix(".md")))


if __name__ == "__main__":
    main()
