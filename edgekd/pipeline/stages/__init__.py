"""The stages of `edgekd compress`, one module each, in chain order:
data, teacher, distill, prune, export, quantize, bench, report. Each has
`run(ctx, cfg, inputs) -> StageResult` (see pipeline/context.py)."""
