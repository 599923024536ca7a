#!/usr/bin/env bash
# Build an emulated aarch64 userland on an x86-64 Debian/Ubuntu machine (run as root):
# Debian's arm64 python3.11 and its libraries unpacked into $CACHE/root, the official
# aarch64 wheels (onnxruntime, numpy, click, onnx) unpacked into $CACHE/site, and an
# arm64-style /proc/cpuinfo for onnxruntime's CPU probe. Idempotent: every step is
# skipped when its output exists. Nothing is written inside the repository.
#
#   benchmarks/arm/build_userland.sh            # then: benchmarks/arm/arm_python.sh -c 'import platform; print(platform.machine())'
#
# Environment: EDGEKD_ARM_CACHE (default ~/.cache/edgekd-arm); ORT_VERSION, NUMPY_VERSION,
# CLICK_VERSION, ONNX_VERSION (default: the versions of the host's python, so that x86 and
# arm run the same onnxruntime).
set -euo pipefail

CACHE=${EDGEKD_ARM_CACHE:-$HOME/.cache/edgekd-arm}
HERE=$(cd "$(dirname "$0")" && pwd)
HOST_PY=${HOST_PY:-python3}
mkdir -p "$CACHE"

host_version() {  # the host's version of a Python package, or empty
    "$HOST_PY" -c "from importlib import metadata as m
try: print(m.version('$1'))
except m.PackageNotFoundError: pass" 2>/dev/null || true
}
ORT_VERSION=${ORT_VERSION:-$(host_version onnxruntime)}
NUMPY_VERSION=${NUMPY_VERSION:-$(host_version numpy)}
CLICK_VERSION=${CLICK_VERSION:-$(host_version click)}
ONNX_VERSION=${ONNX_VERSION:-$(host_version onnx)}
pin() { if [ -n "$2" ]; then echo "$1==$2"; else echo "$1"; fi; }

# 1. qemu-user-static (Debian package; runs aarch64 binaries one process at a time).
if ! command -v qemu-aarch64-static >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static
fi

# 2. arm64 .debs of python3.11 and every library it needs, with apt's arm64 view kept in
#    its own folders so the host's package state is untouched.
APT_OPTS=(-oAPT::Architecture=arm64 -oAPT::Architectures=arm64
          -oDir::State::Lists="$CACHE/apt/lists" -oDir::Cache="$CACHE/apt/cache"
          -oDir::State::status="$CACHE/apt/status" -oDebug::NoLocking=1)
ROOT="$CACHE/root"
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/cache/archives/partial" "$CACHE/debs"
    touch "$CACHE/apt/status"
    apt-get "${APT_OPTS[@]}" update
    # The dependency closure of the interpreter and its standard library (Depends and
    # PreDepends only), as arm64 package names.
    mapfile -t PKGS < <(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances \
        python3.11-minimal libpython3.11-stdlib libstdc++6 libgcc-s1 \
        | grep -v '^ ' | grep -v '^<' | sed 's/:arm64$//' | sort -u)
    echo "downloading ${#PKGS[@]} arm64 packages"
    (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download "${PKGS[@]}")
    rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
    for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$ROOT.tmp"; done
    # usrmerge: Debian 12 packages still ship some files under /lib; the loader's path
    # /lib/ld-linux-aarch64.so.1 must resolve inside the root.
    for d in lib bin sbin; do
        if [ -d "$ROOT.tmp/$d" ] && [ ! -L "$ROOT.tmp/$d" ]; then
            mkdir -p "$ROOT.tmp/usr/$d" && cp -a "$ROOT.tmp/$d/." "$ROOT.tmp/usr/$d/" && rm -rf "$ROOT.tmp/$d"
        fi
        [ -e "$ROOT.tmp/$d" ] || ln -s "usr/$d" "$ROOT.tmp/$d"
    done
    mv "$ROOT.tmp" "$ROOT"
fi

# 3. Official aarch64 wheels, unpacked into a site folder (no pip inside the emulator).
SITE="$CACHE/site"
if [ ! -f "$SITE/.complete" ]; then
    mkdir -p "$CACHE/wheels"
    "$HOST_PY" -m pip download --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 -d "$CACHE/wheels" \
        "$(pin onnxruntime "$ORT_VERSION")" "$(pin numpy "$NUMPY_VERSION")" \
        "$(pin click "$CLICK_VERSION")" "$(pin onnx "$ONNX_VERSION")"
    rm -rf "$SITE" && mkdir -p "$SITE"
    for whl in "$CACHE"/wheels/*.whl; do "$HOST_PY" -m zipfile -e "$whl" "$SITE"; done
    touch "$SITE/.complete"
fi

# 4. An arm64-style /proc/cpuinfo (Neoverse-N1-like; asimddp: the Arm dot-product
#    instructions that int8 kernels use; qemu's default "max" CPU emulates them).
if [ ! -f "$CACHE/cpuinfo" ]; then
    {
        for i in 0 1; do
            printf 'processor\t: %d\nBogoMIPS\t: 50.00\n' "$i"
            printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n'
        done
    } > "$CACHE/cpuinfo"
fi

echo "aarch64 userland ready in $CACHE (run: $HERE/arm_python.sh ...)"
