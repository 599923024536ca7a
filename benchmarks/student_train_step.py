"""What one training step of each student costs, side by side (issue 27: the whole recipe's time).

The edgenet `stem48/2 48x2-96x2/2` student that the search finds is deployed as the same `plain`
layers however it trains: with RepVGG's branches (`rep`: 1x1 and identity beside each 3x3
convolution, each with its batch norm), with ACNet's 1x3 and 3x1 ones too (`rep_ac`), or without
(`plain`). The ResNet-8 headline student is the budget the search compares with. One step: forward in bf16 autocast
(channels_last, batch 128, as the recipe trains on these CPUs), cross-entropy, backward, fused
AdamW. The steps run interleaved in one process (one step of each student in turn, --rounds
times; the median), on --threads threads. Weights and images are random (the cost does not depend
on them). Writes benchmarks/results/student-train-step.{json,md}.
"""

from __future__ import annotations

import common
from common import RESULTS, command, interleaved_calls, machine_line, machine_with_torch, table, write_results

SHAPE = {"stem": 48, "stem_stride": 2, "stages": [[2, 48, 1], [2, 96, 2]]}
STUDENTS = {  # name: (arch, arch_args)
    "edgenet rep_ac": ("edgenet", {**SHAPE, "block": "rep_ac"}),
    "edgenet rep": ("edgenet", {**SHAPE, "block": "rep"}),
    "edgenet plain": ("edgenet", {**SHAPE, "block": "plain"}),
    "resnet8": ("resnet8", {}),
}
REFERENCE = "edgenet rep_ac"  # the others' cost as a share of this one's


def main() -> None:
    parser = common.argument_parser(__doc__)
    common.add_numbers(parser, threads=2, rounds=40)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from edgekd.models.cost import count_params
    from edgekd.models.zoo import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.channels_last
    images = torch.randn(128, 1, 28, 28).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (128,))

    def step_of(model):
        model = model.to(memory_format=layout).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    models = {name: build_model(arch, in_channels=1, num_classes=10, **arch_args)
              for name, (arch, arch_args) in STUDENTS.items()}
    steps = {name: step_of(model) for name, model in models.items()}
    medians = interleaved_calls(steps, args.rounds, warmups=3)  # warm-up: oneDNN's kernels for each shape
    params = {name: count_params(model) for name, model in models.items()}
    rows = [[name, f"{params[name]:,}", f"{medians[name] * 1000:.1f}", f"{medians[name] / medians[REFERENCE]:.2f}x"]
            for name in steps]
    out = {"command": command(), "machine": machine_with_torch(), "threads": args.threads, "rounds": args.rounds,
           "students": {name: {"arch": a, "arch_args": aa} for name, (a, aa) in STUDENTS.items()},
           "params_deployed": params, "step_seconds": medians}
    md = "\n".join([
        "# One training step of each student", "",
        f"Command: `{out['command']}`. " + machine_line(out["machine"], "torch") + f"; {args.threads} threads.", "",
        "One step: batch 128, forward in bf16 autocast (channels_last), cross-entropy, backward, fused AdamW; "
        f"the students' steps interleaved, {args.rounds} rounds, medians. The edgenet students are the shape "
        "the search finds (`stem48/2 48x2-96x2/2`), deployed as the same plain layers however they train; "
        "parameters are counted as deployed.", "",
        *table(["student", "params (deployed)", "step ms", f"vs {REFERENCE}"], "lrrr", rows), "",
    ])
    write_results(RESULTS, "student-train-step", out, md)
    print(md)


if __name__ == "__main__":
    main()
