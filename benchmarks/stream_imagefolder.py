"""Peak memory of `edgekd compress` on a 224x224 RGB image folder of 60,000 JPEGs (issue #15,
"Done when": an ImageFolder of at least 50,000 RGB images at 224x224, peak RSS under 3 GB
through every stage).

    python benchmarks/stream_imagefolder.py [--images /tmp/edgekd-fmnist224] [--out /tmp/edgekd-stream-run]

1. The images: Fashion-MNIST (the Debian package dataset-fashion-mnist) upsampled to 224x224
   and coloured (each image its own foreground and background colour), saved as JPEG
   (quality 90) by a process pool under --images: train/<class>/ the first 50,000 training
   images, test/<class>/ the 10,000 test images. Generated once; reused when complete.
2. The run: `python -m edgekd compress` with data.image_size 224 (streamed: DataLoader
   workers decode per batch) and a tiny schedule (tinycnn width 8 teacher and student, one
   epoch each). data.limit_train is not used: the data stage lists and decodes all 60,000
   files before training.
3. The measurement: every 0.2 s, VmRSS of the compress process and of all its descendants
   (DataLoader workers, ...) summed, and the same for Pss (proportional: pages shared
   between the forked workers counted once); the current stage comes from the run's log
   lines ("[teacher] ..."). The summed RSS overcounts shared pages, so it is the stricter
   figure: the target is checked on it.

Writes benchmarks/results/stream-imagefolder.{md,json} with the machine it ran on; exits 1
if the peak summed RSS of any stage reaches 3 GB.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import common
from common import REPO, RESULTS, machine_info, machine_line, table, write_results

FASHION = Path("/usr/share/datasets/fashion-mnist")
LIMIT_BYTES = 3 * 10**9
SIZE = 224
TRAIN, TEST = 50_000, 10_000
INTERVAL = 0.2
STAGE_LINE = re.compile(r"\[([a-z][a-z0-9-]*)\] \.\.\.\s*$")


def colour_chunk(args) -> int:
    """Write one chunk of images: (folder, class names, start index, grey uint8 images, labels)."""
    import numpy as np
    from PIL import Image

    folder, names, start, images, labels = args
    for k, (grey, label) in enumerate(zip(images, labels)):
        i = start + k
        rng = np.random.default_rng(i)
        fg, bg = rng.integers(60, 256, 3), rng.integers(0, 90, 3)
        big = np.asarray(Image.fromarray(grey, "L").resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
        t = (big / 255.0)[..., None]
        rgb = np.clip(bg + (fg - bg) * t, 0, 255).astype(np.uint8)
        path = Path(folder) / names[int(label)] / f"{i:06d}.jpg"
        Image.fromarray(rgb, "RGB").save(path, format="JPEG", quality=90)
    return len(images)


def generate(root: Path, workers: int) -> dict:
    """The image folder under root (skipped when root/DONE.json says it is complete)."""
    from multiprocessing import Pool

    from edgekd.data.formats.idx import FASHION_MNIST_CLASSES, read_idx

    done = root / "DONE.json"
    if done.is_file() and json.loads(done.read_text()) == {"train": TRAIN, "test": TEST, "size": SIZE}:
        return json.loads(done.read_text())
    names = [n.replace("/", "-").replace(" ", "_") for n in FASHION_MNIST_CLASSES]
    jobs = []
    for split, stem, count in (("train", "train", TRAIN), ("test", "t10k", TEST)):
        x = read_idx(FASHION / f"{stem}-images-idx3-ubyte.gz")[:count]
        y = read_idx(FASHION / f"{stem}-labels-idx1-ubyte.gz")[:count]
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        offset = 0 if split == "train" else TRAIN
        jobs += [(str(root / split), names, offset + i, x[i : i + 500], y[i : i + 500]) for i in range(0, count, 500)]
    start = time.perf_counter()
    with Pool(workers) as pool:
        written = sum(pool.imap_unordered(colour_chunk, jobs))
    info = {"train": TRAIN, "test": TEST, "size": SIZE}
    done.write_text(json.dumps(info))
    print(f"generated {written:,} JPEGs in {time.perf_counter() - start:.0f} s under {root}", flush=True)
    return info


def tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in bytes; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, pss


class Sampler(threading.Thread):
    """Peak summed RSS and PSS of a process tree, per stage (`stage` is set from the log)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stage, self.stop = pid, "startup (listing, decoding every file, preflight)", False
        self.peaks: dict = {}
        self.samples = 0

    def run(self):
        while not self.stop:
            pids = tree(self.pid)
            rss = pss = 0
            for pid in pids:
                r, p = memory(pid)
                rss, pss = rss + r, pss + p
            peak = self.peaks.setdefault(self.stage, {"rss": 0, "pss": 0, "processes": 0})
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            peak["processes"] = max(peak["processes"], len(pids))
            self.samples += 1
            time.sleep(INTERVAL)


def recipe(images: Path, workers: int, batch: int) -> dict:
    train = {"arch": "tinycnn", "arch_args": {"width": 8}, "epochs": 1, "batch_size": batch, "lr": 0.01}
    return {
        "name": "stream-imagefolder",
        "seed": 0,
        "data": {"name": "imagefolder", "path": str(images), "image_size": SIZE, "workers": workers},
        "teacher": dict(train),
        "distill": {**train, "augment": False},
        "quantize": {"max_drop": None},
        "bench": {"warmup": 2, "runs": 20, "min_seconds": 0.0},
    }


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--images", default="/tmp/edgekd-fmnist224", help="image folder (generated when missing)")
    parser.add_argument("--out", default="/tmp/edgekd-stream-run", help="run directory (replaced)")
    parser.add_argument("--workers", type=int, default=None, help="data.workers (default: edgekd's)")
    parser.add_argument("--batch", type=int, default=64, help="teacher and distill batch size")
    parser.add_argument("--probe", type=int, default=None, metavar="N",
                        help="a quick probe: data.limit_train N, and no results written")
    args = parser.parse_args()
    import shutil

    import yaml

    from edgekd.data.config import DataConfig

    images, out = Path(args.images), Path(args.out)
    generate(images, max(1, os.cpu_count() or 1))
    workers = args.workers if args.workers is not None else DataConfig().worker_count()
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe_file = out.parent / f"{out.name}.recipe.yaml"
    the_recipe = recipe(images, workers, args.batch)
    if args.probe:
        the_recipe["data"]["limit_train"] = args.probe
    recipe_file.write_text(yaml.safe_dump(the_recipe, sort_keys=False))
    command = [sys.executable, "-m", "edgekd", "compress", str(recipe_file), "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sampler = Sampler(proc.pid)
    sampler.start()
    log = []
    for line in proc.stdout:
        log.append(line.rstrip("\n"))
        print(line, end="", flush=True)
        found = STAGE_LINE.search(line)
        if found:
            sampler.stage = found.group(1)
    code = proc.wait()
    wall = time.perf_counter() - start
    sampler.stop = True
    sampler.join()
    if code != 0:
        print(f"compress failed with exit code {code}", file=sys.stderr)
        return 1
    report = json.loads((out / "report.json").read_text())
    peak_rss = max(p["rss"] for p in sampler.peaks.values())
    result = {
        "command": "python benchmarks/stream_imagefolder.py  (runs: python -m edgekd compress RECIPE --out "
                   f"{out} --no-progress)",
        "recipe": the_recipe,
        "images": {"train": TRAIN, "test": TEST, "size": f"{SIZE}x{SIZE}", "format": "JPEG q90, RGB",
                   "from": "Fashion-MNIST, upsampled (bicubic) and coloured"},
        "wall_seconds": round(wall, 1),
        "stage_seconds": {name: stage.get("seconds") for name, stage in report["stages"].items()},
        "peak_bytes": {stage: p for stage, p in sampler.peaks.items()},
        "peak_rss_bytes": peak_rss,
        "peak_pss_bytes": max(p["pss"] for p in sampler.peaks.values()),
        "limit_bytes": LIMIT_BYTES,
        "ok": peak_rss < LIMIT_BYTES,
        "samples": sampler.samples,
        "data_record": report["stages"]["data"],
        "models": [{k: m.get(k) for k in ("stage", "top1", "params", "macs", "file_bytes")} | {
            "p50_ms": m.get("latency_ms", {}).get("p50")} for m in report["models"]],
        "machine": machine_info(),
    }
    if args.probe:
        print(json.dumps(result["peak_bytes"], indent=1))
        return 0
    write_results(RESULTS, "stream-imagefolder", result, markdown(result))
    print(f"{'PASS' if result['ok'] else 'FAIL'}  peak RSS (process tree, summed) {peak_rss / 1e9:.2f} GB "
          f"< {LIMIT_BYTES / 1e9:.0f} GB; wall {wall:.0f} s")
    return 0 if result["ok"] else 1


def markdown(result: dict) -> str:
    machine = result["machine"]
    gb = 1e9
    seconds = {stage: "" if v is None else f"{v:.0f}" for stage, v in result["stage_seconds"].items()}
    lines = [
        "# Streaming a 224x224 RGB image folder: peak memory of `edgekd compress`",
        "",
        f"Command: `{result['command']}`",
        "",
        machine_line(machine, "os", "python", "onnxruntime", cores="cores visible") + ".",
        "",
        f"Data: {result['images']['train']:,} train + {result['images']['test']:,} test JPEGs at "
        f"{result['images']['size']} ({result['images']['from']}); data.image_size 224, "
        f"{result['recipe']['data']['workers']} DataLoader workers; tinycnn (width 8) teacher and student, "
        "one epoch each. The data stage listed and decoded all of them before training.",
        "",
        f"Wall time: {result['wall_seconds']:.0f} s. Target: peak RSS of the whole process tree under "
        f"{result['limit_bytes'] / gb:.0f} GB in every stage: **{'pass' if result['ok'] else 'FAIL'}** "
        f"(peak {result['peak_rss_bytes'] / gb:.2f} GB summed RSS, {result['peak_pss_bytes'] / gb:.2f} GB PSS).",
        "",
        *table(["phase", "seconds", "peak RSS, summed (GB)", "peak PSS (GB)", "processes"], "lllll",
               [[stage, seconds.get(stage, ""), f"{peak['rss'] / gb:.2f}", f"{peak['pss'] / gb:.2f}", peak["processes"]]
                for stage, peak in result["peak_bytes"].items()]),
        "",
        "Summed RSS counts the pages that forked DataLoader workers share with the main process once per",
        "process, so it overstates the memory in use; PSS divides shared pages among their processes.",
        "",
        *table(["model", "top-1 (%)", "params", "MACs", "p50 (ms)"], "lllll",
               [[m["stage"], "" if m["top1"] is None else f"{m['top1']:.2f}", f"{m['params']:,}", f"{m['macs'] or 0:,}",
                 "" if m["p50_ms"] is None else f"{m['p50_ms']:.3f}"] for m in result["models"]]),
    ]
    params = max((m["params"] or 0) for m in result["models"])
    lines += ["", f"Top-1 is not the point here (one epoch of a {params:,}-parameter model, quantize.max_drop null); "
              "memory is. Stage seconds are the run's own records; the startup phase (before the run directory "
              "exists) lists, opens and decodes every file once and runs the preflight checks."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
