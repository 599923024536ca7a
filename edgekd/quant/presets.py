"""int8 settings per deployment target (x86 with or without VNNI, ARM64, CUDA, OpenVINO): the presets,
the target 'auto' picks from the CPU flags, and the settings a quantization ends up with."""

from __future__ import annotations

from edgekd.quant.config import QuantConfig
from edgekd.runtime.machine import detect_machine

# Defaults per deployment target (as Optimum's AutoQuantizationConfig presets do).
TARGET_PRESETS = {
    # VNNI (AVX-512 VNNI / AVX-VNNI): U8S8 runs on the int8 dot-product instructions. Measured
    # (benchmarks/results/int8-speed-resnet20.md, int8-speed-repeat.md: ResNet-20, 28x28, batch 1,
    # 1 thread, Xeon with AVX-512 VNNI, onnxruntime 1.32): QDQ U8S8 per-channel 1.57-1.84x faster
    # than fp32 in edgekd's bench (2.02x in the shared host's fast spells, 1.66x in its slow ones),
    # every U8S8 variant (QOperator, per-tensor, reduce_range) alike, S8S8 QDQ ~0.55x (12 of 21
    # convs left float). The int8 convs are ~1.5x faster; the 9 residual Adds fp32 fuses into its
    # convs run as QLinearAdd (12%).
    # pad_input_channels_to 4: the x86 int8 conv kernel needs input channels in fours (edgekd.quant.pad)
    "x86-vnni": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
                 "pad_input_channels_to": 4},
    # AVX2 without VNNI: U8S8 can saturate (vpmaddubsw); ONNX Runtime's docs advise reduce_range (7-bit weights)
    "x86-avx2": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True, "per_channel": True,
                 "pad_input_channels_to": 4},
    # ARM64: S8S8 (signed dot products, sdot/smmla); MLAS's ARM64 indirect conv skips layers with
    # under 64 input channels whatever their count, so no padding
    "arm64": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
              "pad_input_channels_to": 0},
    # CUDA / TensorRT: symmetric int8 activations and weights
    "cuda": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
             "pad_input_channels_to": 0},
    # OpenVINO EP, chosen by measurement (benchmarks/results/openvino-int8-presets.md: the default run's
    # student and teacher, CPU and OpenVINO interleaved, 1 thread, AMD EPYC with AVX-512 VNNI,
    # onnxruntime-openvino 1.24.1): U8S8 and S8S8 compile every conv to u8 and run 1.3-1.8x faster
    # than OpenVINO's fp32; U8U8 leaves the convs in f32/bf16 (0.76-0.85x). U8S8 per-channel had the
    # best geometric-mean speed-up (1.60x) and kept top-1 within 0.5 points; padding the first conv's
    # input (the x86 CPU kernel's need) did not help OpenVINO (1.33x vs 1.40x on the student).
    "openvino": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False, "per_channel": True,
                 "pad_input_channels_to": 0},
}


QUANT_FIELDS = ("activation_type", "weight_type", "reduce_range", "per_channel", "pad_input_channels_to")


def target_for_machine(machine: dict) -> str:
    """The preset for a machine: VNNI flags -> x86-vnni, avx2 -> x86-avx2, aarch64/arm64 -> arm64.
    Anything else gets x86-avx2 (U8S8 with reduce_range: the safe choice without VNNI)."""
    arch = str(machine.get("arch", "")).lower()
    flags = set(machine.get("flags", ()))
    if arch in ("aarch64", "arm64"):
        return "arm64"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    return "x86-avx2"


def resolve_quant_settings(cfg: QuantConfig, machine: dict | None = None) -> dict:
    """The settings a quantization uses: the target's preset, then every field the recipe sets.

    Returns {target, target_from ('recipe' or 'cpu flags'), activation_type, weight_type,
    reduce_range, per_channel, pad_input_channels_to, overrides (the fields taken from the recipe)}.
    """
    if cfg.target == "auto":
        target = target_for_machine(machine if machine is not None else detect_machine())
        source = "cpu flags"
    else:
        target, source = cfg.target, "recipe"
    settings = {"target": target, "target_from": source, **TARGET_PRESETS[target]}
    overrides = [key for key in QUANT_FIELDS if getattr(cfg, key) is not None]
    for key in overrides:
        settings[key] = getattr(cfg, key)
    settings["overrides"] = overrides
    return settings


def format_name(settings: dict) -> str:
    """'QDQ U8S8' and the like: activation type, then weight type."""
    letter = {"uint8": "U", "int8": "S"}
    return f"QDQ {letter[settings['activation_type']]}8{letter[settings['weight_type']]}8"
