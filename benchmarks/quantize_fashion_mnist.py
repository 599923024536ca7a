"""int8 accuracy on the full Fashion-MNIST: PTQ (MinMax, Entropy, Percentile) and QAT.

    python benchmarks/quantize_fashion_mnist.py [--teacher-epochs 2] [--distill-epochs 3] [--qat-epochs 2]

A ResNet-8 teacher is trained and a TinyCNN-24 student (the default recipe's pair) is
distilled from it on the 54,000 training images (6,000 held out for val); the student is
exported to fp32 ONNX, quantized by ONNX Runtime's PTQ with each calibration method (512
calibration images, the x86-vnni preset: QDQ U8S8, per-channel), and fine-tuned with QAT
(edgekd.qat: folded batch norm, fake quantization, KD from the teacher) and exported as QDQ.
Every model is evaluated by ONNX Runtime on the 10,000 test images; the QAT model also in
PyTorch (fake quantization). Targets (issue #8): PTQ loses at most 0.5 points top-1 against
the fp32 student, QAT at most 0.2, and the deployed QAT ONNX model is within 0.1 points of
the PyTorch fake-quant model. Writes benchmarks/results/quantize-fashion-mnist.{json,md}.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from common import RESULTS, command, int8_op_counts, machine_info, machine_line, split_tensors, table, write_results
from edgekd.data.config import DataConfig
from edgekd.data.splits import load_splits
from edgekd.distill.config import DistillConfig
from edgekd.distill.offline import distill
from edgekd.models.cost import count_macs, count_params
from edgekd.models.zoo import build_model
from edgekd.onnx_export import ExportConfig, model_metadata, to_onnx
from edgekd.quant.config import QatConfig, QuantConfig
from edgekd.quant.ptq import ptq
from edgekd.quant.qat.export import export_qdq
from edgekd.quant.qat.prepare import prepare_qat
from edgekd.quant.qat.train import qat
from edgekd.runtime.config import BenchConfig
from edgekd.runtime.inputs import evaluate, preprocess
from edgekd.runtime.session import make_session, optimized_op_counts
from edgekd.train.config import TeacherConfig
from edgekd.train.evaluate import accuracy
from edgekd.train.loop import cross_entropy_step, fit
from edgekd.train.plumbing import RunOptions, TrainData
from edgekd.train.tensors import to_tensor

DATA = "/usr/share/datasets/fashion-mnist"
TARGETS = {"ptq": 0.5, "qat": 0.2, "qat_deployed_vs_fake_quant": 0.1}


def main() -> int:
    parser = common.argument_parser(__doc__)
    common.add_numbers(parser, teacher_epochs=2, distill_epochs=3, qat_epochs=2, qat_lr=0.0005, student_width=24)
    parser.add_argument("--limit-train", type=int, default=None, help="fewer training images (a smoke test)")
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json in --out")
    args = parser.parse_args()
    if args.markdown_only:
        out = json.loads((Path(args.out) / "quantize-fashion-mnist.json").read_text())
        (Path(args.out) / "quantize-fashion-mnist.md").write_text(markdown(out))
        return 0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    wall = time.perf_counter()
    seconds = {}

    splits = load_splits(DataConfig(name="fashion-mnist", path=DATA, limit_train=args.limit_train,
                                    limit_test=args.limit_test), seed=0)
    spec = splits.spec
    shape = (spec.channels, spec.height, spec.width)
    t = split_tensors(splits, "train", "val")
    test_x, test_y = split_tensors(splits, "test").values()
    print(f"data: {len(t['train_y'])} train, {len(t['val_y'])} val, {len(test_y)} test", flush=True)

    start = time.perf_counter()
    teacher = build_model("resnet8", in_channels=1, num_classes=10)
    fit(teacher, cross_entropy_step(teacher), TrainData.of(**t),
        TeacherConfig(epochs=args.teacher_epochs, augment=False), RunOptions(desc="teacher", progress=False))
    seconds["teacher"] = time.perf_counter() - start
    teacher.eval()
    print(f"teacher: test {accuracy(teacher, test_x, test_y):.2f}% in {seconds['teacher']:.0f} s", flush=True)

    start = time.perf_counter()
    student = build_model("tinycnn", in_channels=1, num_classes=10, width=args.student_width)
    distill_cfg = DistillConfig(epochs=args.distill_epochs, augment=False)
    distill(student, teacher, TrainData.of(**t), distill_cfg, RunOptions(progress=False))
    seconds["distill"] = time.perf_counter() - start
    student.eval()
    print(f"student: test {accuracy(student, test_x, test_y):.2f}% in {seconds['distill']:.0f} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="quantize-fmnist-"))
    meta = model_metadata(stage="student", arch=f"tinycnn-{args.student_width}", spec=spec,
                          params=count_params(student), macs=count_macs(student, shape))
    fp32 = work / "student.fp32.onnx"
    to_onnx(student, fp32, input_shape=shape, metadata=meta, cfg=ExportConfig(), check_inputs=t["val_x"][:8])
    test_np = preprocess(splits.test_x, meta)
    calib = preprocess(splits.calib_x, meta)
    models = {"fp32": {"path": fp32}}

    for method in ("minmax", "entropy", "percentile"):
        start = time.perf_counter()
        path = work / f"student.ptq-{method}.onnx"
        report = ptq(fp32, path, calib_images=calib, cfg=QuantConfig(calibration=method, target="x86-vnni",
                                                                      max_drop=None),
                     metadata={**meta, "edgekd.stage": "int8"}, progress=False)
        seconds[f"ptq_{method}"] = time.perf_counter() - start
        models[f"ptq-{method}"] = {"path": path, "format": "QDQ U8S8 per-channel", "calib_samples": report.samples}

    start = time.perf_counter()
    qmodel = prepare_qat(student, activation_type="uint8")
    qat_cfg = QatConfig(epochs=args.qat_epochs, lr=args.qat_lr)
    result = qat(qmodel, teacher, TrainData.of(**t), qat_cfg, RunOptions(progress=False),
                 temperature=distill_cfg.temperature, alpha=distill_cfg.alpha,
                 calib_images=to_tensor(splits.calib_x, spec.mean, spec.std))
    qat_path = work / "student.qat.onnx"
    export_qdq(qmodel, qat_path, input_shape=shape, metadata={**meta, "edgekd.stage": "int8"})
    seconds["qat"] = time.perf_counter() - start
    fake_quant_top1 = accuracy(qmodel, test_x, test_y)
    models["qat"] = {"path": qat_path, "format": "QDQ U8S8 per-channel (QAT)",
                     "fake_quant_test_top1_torch": fake_quant_top1,
                     "qat_history": result.fit.epochs, "observe_steps": result.observe_steps,
                     "steps": result.total_steps}
    print(f"qat: fake-quant test {fake_quant_top1:.2f}% in {seconds['qat']:.0f} s", flush=True)

    for name, entry in models.items():
        session = make_session(entry["path"], BenchConfig(threads=1))
        entry["test_top1"] = evaluate(session, test_np, splits.test_y)
        entry["file_bytes"] = Path(entry["path"]).stat().st_size
        ops = optimized_op_counts(entry["path"], BenchConfig(threads=1))
        entry["op_counts"] = ops
        entry["path"] = Path(entry["path"]).name
        print(f"{name}: test {entry['test_top1']:.2f}% (ONNX Runtime)", flush=True)
    fp32_top1 = models["fp32"]["test_top1"]
    checks = []
    for name in ("ptq-minmax", "ptq-entropy", "ptq-percentile", "qat"):
        drop = fp32_top1 - models[name]["test_top1"]
        limit = TARGETS["qat" if name == "qat" else "ptq"]
        checks.append({"target": f"{name} loses <= {limit} points vs the fp32 student", "value": round(drop, 2),
                       "pass": drop <= limit})
    gap = abs(models["qat"]["test_top1"] - fake_quant_top1)
    checks.append({"target": "deployed QAT ONNX within 0.1 points of the PyTorch fake-quant model",
                   "value": round(gap, 2), "pass": gap <= TARGETS["qat_deployed_vs_fake_quant"]})
    out = {
        "command": command(),
        "machine": machine_info(),
        "note": "1 torch thread; the 2 CPU cores were shared with other jobs while this ran",
        "data": {"train": len(t["train_y"]), "val": len(t["val_y"]), "test": len(test_y),
                 "calib": len(splits.calib_y), "source": spec.source},
        "setup": {"teacher": "resnet8", "teacher_epochs": args.teacher_epochs,
                  "student": f"tinycnn width {args.student_width}", "distill_epochs": args.distill_epochs,
                  "qat_epochs": args.qat_epochs, "qat_lr": args.qat_lr, "qat_observe_fraction": qat_cfg.observe_fraction,
                  "teacher_test_top1_torch": accuracy(teacher, test_x, test_y),
                  "student_test_top1_torch": accuracy(student, test_x, test_y)},
        "models": models,
        "checks": checks,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    write_results(Path(args.out), "quantize-fashion-mnist", out, markdown(out),
                  json_text=json.dumps(out, indent=1, default=str))
    print(markdown(out), flush=True)
    return 0


def markdown(out: dict) -> str:
    m, s = out["machine"], out["setup"]
    fp32 = out["models"]["fp32"]["test_top1"]
    lines = ["# int8 on the full Fashion-MNIST: PTQ and QAT", "",
             f"Command: `{out['command']}`", "",
             machine_line(m, "int8", "onnxruntime") + f". {out['note']}. Wall time {out['wall_seconds']:.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in out['seconds'].items())}).", "",
             f"{s['teacher']} teacher ({s['teacher_epochs']} epochs, test {s['teacher_test_top1_torch']:.2f}%), "
             f"{s['student']} student distilled for {s['distill_epochs']} epochs on {out['data']['train']:,} "
             f"images ({out['data']['val']:,} held out for val). PTQ: ONNX Runtime quantize_static, "
             f"{out['data']['calib']} calibration images, x86-vnni preset (QDQ U8S8, per-channel weights). "
             f"QAT: {s['qat_epochs']} epochs of KD fine-tuning (lr {s['qat_lr']}), activation ranges observed "
             f"for the first {s['qat_observe_fraction']:.0%} of the steps, then frozen. Top-1 on the "
             f"{out['data']['test']:,} test images, by ONNX Runtime (CPU provider).", ""]
    cells = []
    for name, e in out["models"].items():
        delta = "" if name == "fp32" else f"{e['test_top1'] - fp32:+.2f}"
        cells.append([name, f"{e['test_top1']:.2f}", delta, f"{e['file_bytes'] / 1024:.1f} KB",
                      *int8_op_counts(e.get("op_counts"))])
    lines += table(["model", "top-1 %", "vs fp32 (points)", "file", "int8 kernels", "Q/DQ left"], "lrrrrr", cells)
    q = out["models"]["qat"]
    lines += ["", f"QAT model in PyTorch (fake quantization): {q['fake_quant_test_top1_torch']:.2f}% "
              f"(deployed ONNX: {q['test_top1']:.2f}%).", "",
              *table(["target", "value", "result"], "lrl",
                     [[c["target"], f"{c['value']:.2f}", "pass" if c["pass"] else "FAIL"] for c in out["checks"]])]
    lines += ["", "Values: top-1 points lost against the fp32 student (negative: int8 scored higher), and the "
              "absolute gap between the deployed QAT model and its PyTorch fake-quant model.", "",
              "## Notes", "",
              f"- QAT is {s['qat_epochs']} more epochs of KD training than the fp32 student had; its difference "
              f"to fp32 ({q['test_top1'] - fp32:+.2f} points) includes that extra training, not only the "
              "quantization. The QAT check is that fine-tuning in int8 loses nothing; a like-for-like fp32 "
              "fine-tune was not run.",
              "- The deployed QAT model is the fake-quant model exported by edgekd.qat_onnx (route (a) of the "
              "issue: QuantizeLinear/DequantizeLinear from torch's fake quantization, int8/int32 initializers); "
              "ONNX Runtime runs it as QLinearConv/QGemm/QLinearGlobalAveragePool with one QuantizeLinear "
              "(the input) left.",
              f"- One epoch of 54,000 images took about {out['seconds']['distill'] / s['distill_epochs']:.0f} s "
              f"(distill, cached teacher logits) and {out['seconds']['qat'] / s['qat_epochs']:.0f} s (QAT) here.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
