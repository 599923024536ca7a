"""The README's worked example "Your own data and model", run end to end and timed.

    python benchmarks/own_data_example.py [--per-class 200] [--root /tmp/edgekd-own-data]

What a new user has, and what they type:

1. Their images: an ImageFolder of 224x224 RGB images, train/<class>/ and test/<class>/.
   Here: Fashion-MNIST (the Debian package dataset-fashion-mnist, else the embedded subset)
   upsampled and coloured, --per-class train images per class (a quarter as many test
   images), every fourth one saved as PNG and the rest as JPEG.
2. Their model: a torchvision resnet18 trained on those images with plain PyTorch, saved as
   a DataParallel-style checkpoint `{"model": {"module.conv1.weight": ...}, "epoch": N}`
   (edgekd unwraps both). This step stands for the user's own training; it is timed apart.
3. `edgekd compress own-data.yaml` (the recipe below: the resnet18 teacher loaded from that
   file, a torchvision mobilenet_v3_small student distilled from it, int8, bench), then
   `edgekd bench RUN_DIR` on the result, both timed.

Writes benchmarks/results/own-data-example.{md,json} with the machine it ran on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import common
from common import RESULTS, command, machine_line, machine_with_torch, pct, table, write_results

SIZE = 224
RECIPE = """\
name: own-data
data:
  name: imagefolder
  path: {root}            # train/<class>/*.jpg|png and test/<class>/*
  image_size: 224
  mean: imagenet          # as the resnet18 was trained
  std: imagenet
teacher:
  arch: torchvision:resnet18
  weights: {weights}      # a state_dict or a checkpoint dict; module. prefixes are stripped
  epochs: 0               # use it as it is
distill:
  arch: torchvision:mobilenet_v3_small
  epochs: {epochs}
  batch_size: 64
  lr: 0.003
bench:
  runs: 50
"""


def make_images(root: Path, per_class: int) -> dict:
    """The coloured, upsampled Fashion-MNIST folder (kept when it is already complete)."""
    import numpy as np
    from PIL import Image

    done = root / "DONE.json"
    wanted = {"per_class": per_class, "size": SIZE}
    if done.is_file() and json.loads(done.read_text()) == wanted:
        return wanted
    from edgekd.data.formats.npz import load_embedded

    raw = load_embedded()
    names = [n.replace("/", "-").replace(" ", "_") for n in raw.class_names]
    rng = np.random.default_rng(0)
    for split, x, y, count in (("train", raw.train_x, raw.train_y, per_class),
                               ("test", raw.test_x, raw.test_y, max(1, per_class // 4))):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(np.flatnonzero(y == c)[:count]):
                fg, bg = rng.integers(60, 256, 3), rng.integers(0, 90, 3)
                grey = Image.fromarray(x[i, 0], "L").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
                t = (np.asarray(grey, np.float32) / 255.0)[..., None]
                rgb = Image.fromarray(np.clip(bg + (fg - bg) * t, 0, 255).astype(np.uint8), "RGB")
                rgb.save(folder / f"{i:05d}.{'png' if k % 4 == 0 else 'jpg'}")
    done.write_text(json.dumps(wanted))
    return wanted


def train_resnet18(root: Path, out: Path, epochs: int) -> dict:
    """The user's own resnet18, trained with plain PyTorch (bf16 autocast where the CPU has it)."""
    import torch
    from torchvision import datasets, models
    from torchvision.transforms import v2

    from edgekd.train.compute import cpu_has_bf16

    torch.manual_seed(0)
    normalize = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = v2.Compose([v2.RGB(), v2.RandomResizedCrop(SIZE, scale=(0.5, 1.0)), v2.RandomHorizontalFlip(),
                           v2.ToImage(), v2.ToDtype(torch.float32, scale=True), normalize])
    test_tf = v2.Compose([v2.RGB(), v2.Resize(256), v2.CenterCrop(SIZE), v2.ToImage(),
                          v2.ToDtype(torch.float32, scale=True), normalize])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(root / "train", train_tf), batch_size=64,
                                        shuffle=True, num_workers=2)
    test = torch.utils.data.DataLoader(datasets.ImageFolder(root / "test", test_tf), batch_size=128, num_workers=2)
    model = models.resnet18(num_classes=len(train.dataset.classes)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * len(train)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16())
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in train:
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x.to(memory_format=torch.channels_last)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(f"resnet18 epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in test:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    # as a DataParallel run saves it: edgekd strips the prefix and unwraps the dict
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": epochs}, out)
    return {"seconds": round(time.perf_counter() - start, 1), "epochs": epochs,
            "test_top1": round(100.0 * correct / total, 2)}


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done


def main() -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--root", default="/tmp/edgekd-own-data", help="the image folder (generated once)")
    parser.add_argument("--per-class", type=int, default=200, help="train images per class")
    parser.add_argument("--teacher-epochs", type=int, default=3, help="the user's own resnet18 training")
    parser.add_argument("--epochs", type=int, default=3, help="distill.epochs")
    parser.add_argument("--work", default="/tmp/edgekd-own-data-run", help="weights, recipe and run directory")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    root, work = Path(args.root), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images = make_images(root, args.per_class)
    images_seconds = round(time.perf_counter() - start, 1)
    weights = work / "resnet18-own.pth"
    own = train_resnet18(root, weights, args.teacher_epochs)
    recipe_text = RECIPE.format(root=root, weights=weights, epochs=args.epochs)
    recipe = work / "own-data.yaml"
    recipe.write_text(recipe_text)
    run_dir = work / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    edgekd = [sys.executable, "-m", "edgekd"]
    compress_seconds, _ = timed([*edgekd, "compress", str(recipe), "--out", str(run_dir), "--no-progress"])
    bench_seconds, bench = timed([*edgekd, "bench", str(run_dir), "--json-out", str(work / "bench.json"), "--force"])
    report = json.loads((run_dir / "report.json").read_text())

    result = {
        "command": command(),
        "machine": machine_with_torch(),
        "images": {**images, "train": images["per_class"] * 10, "test": max(1, images["per_class"] // 4) * 10,
                   "seconds": images_seconds},
        "own_resnet18": own,
        # the folders of this machine as a user would write them (the weights path first: it may start with root)
        "recipe": recipe_text.replace(str(weights), "resnet18-own.pth").replace(str(root), "data/clothes"),
        "compress_seconds": compress_seconds,
        "bench_seconds": bench_seconds,
        "stage_seconds": {name: s.get("seconds") for name, s in report["stages"].items()},
        "models": [{k: m.get(k) for k in ("name", "stage", "top1", "params", "macs", "file_bytes")}
                   | {"p50_ms": m["latency_ms"]["p50"]} for m in report["models"]],
        "adapted": {name: s["adapted"] for name, s in report["stages"].items() if s.get("adapted")},
        "flags": report.get("flags", []),
        "bench_table": bench.stdout,
    }
    if not args.no_write:
        write_results(RESULTS, "own-data-example", result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# The README's worked example: your own data and model",
        "",
        f"Command: `{result['command']}`. " + machine_line(m, "torch", "onnxruntime") + ".",
        "",
        f"- Images: {result['images']['train']:,} train + {result['images']['test']:,} test, 224x224 RGB "
        f"(JPEG and PNG), written in {result['images']['seconds']} s.",
        f"- The user's own resnet18 (plain PyTorch, {result['own_resnet18']['epochs']} epochs): "
        f"{result['own_resnet18']['test_top1']:.2f}% test top-1, {result['own_resnet18']['seconds']} s.",
        f"- `edgekd compress own-data.yaml`: **{result['compress_seconds']} s** "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in result['stage_seconds'].items() if v is not None)}).",
        f"- `edgekd bench RUN_DIR`: {result['bench_seconds']} s.",
        "",
        "```yaml",
        result["recipe"].rstrip(),
        "```",
        "",
        *table(["model", "top-1 %", "params", "p50 ms"], "lrrr",
               [[x["name"], pct(x["top1"]), f"{x['params']:,}", f"{x['p50_ms']:.3f}"] for x in result["models"]]),
        "",
    ]
    for stage, changes in result["adapted"].items():
        lines.append(f"Adapted ({stage}): {'; '.join(changes)}.")
    for flag in result["flags"]:
        lines.append(f"Flag: {flag.get('message', flag)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
