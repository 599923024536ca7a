#!/usr/bin/env bash
# Run the emulated aarch64 python3.11 (built by build_userland.sh) with the aarch64 wheels
# and this checkout's edgekd on its path. onnxruntime's CPU probe crashes on the host's x86
# /proc/cpuinfo, so the command runs in a private mount namespace with an arm64-style
# cpuinfo bind-mounted over it (root needed for unshare --mount).
#
#   benchmarks/arm/arm_python.sh -m edgekd bench MODEL.onnx --data eval.npz
set -euo pipefail
CACHE=${EDGEKD_ARM_CACHE:-$HOME/.cache/edgekd-arm}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
ROOT="$CACHE/root"
[ -x "$ROOT/usr/bin/python3.11" ] || { echo "no aarch64 userland in $CACHE: run benchmarks/arm/build_userland.sh" >&2; exit 2; }
export PYTHONPATH="$REPO:$CACHE/site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
exec unshare --mount -- sh -c 'mount --bind "$1/cpuinfo" /proc/cpuinfo && shift && exec "$@"' sh "$CACHE" \
    qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"
