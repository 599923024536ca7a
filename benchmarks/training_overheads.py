"""What the training loop spends besides the student's own step, before and after it was cut, side by side.

Four pairs, each timed interleaved in one process (one of a pair, then the other, --rounds
times; the median), on the CPU with the run's threads (--threads):
- the headline ResNet-20 teacher's forward on a batch of 128 (bf16 autocast, channels_last, as a
  distillation teacher runs at every step): the model as trained vs its inference copy
  (edgekd.models.inference: batch norms folded into the convolutions);
- val accuracy of the edgenet rep_ac student found by the search (`stem48/2 48x2-96x2/2`) on 6,000
  images in fp32 (what the loop does after every epoch): its training form (four branches per
  layer, 1,024 images per pass) vs its inference copy (one convolution per layer) as predict() runs it;
- the teacher's val accuracy the same way (its inference copy in fp32): 1,024 images per forward
  pass vs predict()'s EVAL_BATCH (256);
- one AdamW step over that student's parameters: torch's per-tensor loop vs its fused kernel.
Weights are random (the cost does not depend on them). Writes
benchmarks/results/training-overheads.{json,md}.
"""

from __future__ import annotations

import common
from common import RESULTS, command, interleaved_calls, machine_line, machine_with_torch, table, write_results

STUDENT = {"stem": 48, "stem_stride": 2, "stages": [[2, 48, 1], [2, 96, 2]], "block": "rep_ac"}


def main() -> None:
    parser = common.argument_parser(__doc__)
    common.add_numbers(parser, threads=2, rounds=30, val_images=6000)
    args = parser.parse_args()

    import torch

    from edgekd.models.inference import inference_copy
    from edgekd.models.zoo import build_model
    from edgekd.train.compute import Compute, use
    from edgekd.train.evaluate import EVAL_BATCH, accuracy, predict

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.channels_last
    teacher = build_model("resnet20", in_channels=1, num_classes=10).eval().to(memory_format=layout)
    teacher_copy = inference_copy(teacher).to(memory_format=layout)
    batch = torch.randn(128, 1, 28, 28).contiguous(memory_format=layout)

    def forward(model):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(batch)
        return run

    student = build_model("edgenet", in_channels=1, num_classes=10, **STUDENT)
    images, labels = torch.randn(args.val_images, 1, 28, 28), torch.randint(0, 10, (args.val_images,))
    compute = Compute(precision="bf16", channels_last=True)

    def val(copy: bool):
        def run():
            if copy:  # what predict() runs since the change
                accuracy(student, images, labels)
            else:  # the model itself, in eval mode, as predict() ran it before
                student.eval()
                with torch.no_grad():
                    for i in range(0, len(images), 1024):
                        student(compute.batch(images[i:i + 1024]))
                student.train()
        return run

    def teacher_val(batch_size: int):
        def run():
            (predict(teacher, images, batch_size, full_precision=True).argmax(1) == labels).float().mean()
        return run

    def adamw(**options):
        params = [p.detach().clone().requires_grad_() for p in student.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4, **options)
        return optimizer.step

    with use(compute):
        compute.model(student)
        results = {
            "teacher forward (batch 128, bf16)": interleaved_calls(
                {"before": forward(teacher), "after": forward(teacher_copy)}, args.rounds),
            f"rep_ac student val accuracy ({args.val_images:,} images, fp32)": interleaved_calls(
                {"before": val(copy=False), "after": val(copy=True)}, max(5, args.rounds // 5)),
            f"teacher val accuracy ({args.val_images:,} images, fp32; 1,024 vs {EVAL_BATCH} per pass)": interleaved_calls(
                {"before": teacher_val(1024), "after": teacher_val(EVAL_BATCH)}, max(5, args.rounds // 5)),
            f"AdamW step ({sum(1 for _ in student.parameters())} tensors)": interleaved_calls(
                {"before": adamw(), "after": adamw(fused=True)}, args.rounds),
        }
    rows = [[what, f"{r['before'] * 1000:.2f}", f"{r['after'] * 1000:.2f}", f"{r['before'] / r['after']:.2f}x"]
            for what, r in results.items()]
    out = {"command": command(), "machine": machine_with_torch(), "threads": args.threads, "rounds": args.rounds,
           "seconds": results}
    md = "\n".join([
        "# What the training loop spends besides the student's step", "",
        f"Command: `{out['command']}`. " + machine_line(out["machine"], "torch") + f"; {args.threads} threads.", "",
        "Before: the teacher and the val model run as trained (batch norms, RepConv branches), val in passes of "
        f"1,024 images, AdamW's per-tensor loop. After: their inference copies (edgekd.models.inference), val in "
        f"passes of {EVAL_BATCH} (the same logits, bit for bit), the fused AdamW. Each pair timed interleaved in one "
        "process; medians.", "",
        *table(["what", "before ms", "after ms", "speed-up"], "lrrr", rows), "",
    ])
    write_results(RESULTS, "training-overheads", out, md)
    print(md)


if __name__ == "__main__":
    main()
