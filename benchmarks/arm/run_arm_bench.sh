#!/usr/bin/env bash
# `edgekd bench` under aarch64 emulation vs natively on this x86-64 machine, on the int8
# and fp32 models of a default run and its eval.npz; writes
# benchmarks/results/arm-emulated.{md,json}. Run as root (apt-get, unshare --mount).
#
#   benchmarks/arm/run_arm_bench.sh [RUN_DIR]     # default: a fresh `edgekd compress` run in the cache
#
# Environment: EVAL_LIMIT (default 200: the first N eval images; emulated fp32 inference
# takes about 1.4 s per image here, so the 2,000-image set would take ~50 min), RUNS (10)
# and WARMUP (2) for the latency runs (meaningless under emulation, kept short),
# EDGEKD_ARM_CACHE (~/.cache/edgekd-arm), HOST_PY (python3 with edgekd's dependencies).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${EDGEKD_ARM_CACHE:-$HOME/.cache/edgekd-arm}
HOST_PY=${HOST_PY:-python3}
EVAL_LIMIT=${EVAL_LIMIT:-200}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
export HOST_PY EDGEKD_ARM_CACHE=$CACHE
START=$(date +%s)

"$HERE/build_userland.sh"

RUN_DIR=${1:-}
if [ -z "$RUN_DIR" ]; then
    RUN_DIR="$CACHE/default-run"
    [ -f "$RUN_DIR/model.int8.onnx" ] || (cd "$REPO" && "$HOST_PY" -m edgekd compress --out "$RUN_DIR" --force)
fi

# A bench folder with the run's fp32 and int8 models and the first EVAL_LIMIT eval images:
# as a run directory, `edgekd bench` compares the int8 model with the fp32 one by itself.
WORK="$CACHE/work"
rm -rf "$WORK" && mkdir -p "$WORK/run"
cp "$RUN_DIR/model.fp32.onnx" "$RUN_DIR/model.int8.onnx" "$WORK/run/"
"$HOST_PY" - "$RUN_DIR/eval.npz" "$WORK/run/eval.npz" "$EVAL_LIMIT" <<'PY'
import sys
import numpy as np
src, dst, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with np.load(src, allow_pickle=False) as d:
    arrays = {k: (d[k][:limit] if k in ("x", "y") else d[k]) for k in d.files}
np.savez(dst, **arrays)
PY

BENCH=(-m edgekd bench "$WORK/run" --runs "$RUNS" --warmup "$WARMUP" --min-seconds 0 --threads 1 -q)
echo "x86-64: native"
(cd "$REPO" && "$HOST_PY" "${BENCH[@]}" --json-out "$WORK/x86.json")
echo "aarch64: emulated (qemu-aarch64-static)"
ARM_START=$(date +%s)
(cd "$REPO" && "$HERE/arm_python.sh" "${BENCH[@]}" --json-out "$WORK/arm.json")
END=$(date +%s)

"$HOST_PY" "$HERE/summarize.py" --x86 "$WORK/x86.json" --arm "$WORK/arm.json" --run-dir "$RUN_DIR" \
    --eval-limit "$EVAL_LIMIT" --wall-s $((END - START)) --arm-wall-s $((END - ARM_START)) \
    --command "benchmarks/arm/run_arm_bench.sh $*" --out "$REPO/benchmarks/results/arm-emulated"
