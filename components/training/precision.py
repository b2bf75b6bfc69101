"""`train.precision`: the Keras dtype policy a trial trains under, and why.

    float32         the default: every op in float32; reruns give bit-identical losses on one machine
    mixed_bfloat16  Keras mixed precision with bfloat16 compute: weights, batch-norm statistics and
                    the models' final logits/box outputs stay float32 (each model family builds its
                    last layer with dtype="float32"; the fused batch norm keeps float32 parameters
                    and statistics); bfloat16 has float32's exponent range, so no loss scaling
    mixed_float16   the same with float16 compute and Keras's LossScaleOptimizer
    auto            mixed_bfloat16 where the hardware runs bfloat16 matrix products fast, else float32:
                      - a GPU of compute capability 8.0 or later (Ampere on: bfloat16 tensor cores);
                        7.x (Volta, Turing: float16 tensor cores only) gets mixed_float16
                      - a CPU with AMX-BF16 tiles (`amx_bf16` in /proc/cpuinfo: Sapphire Rapids on),
                        which oneDNN uses for bfloat16 convolutions and matrix products
                      - everything else float32: AVX512-BF16 alone only speeds the conversions and
                        dot products of bfloat16 pairs, and float16 on a CPU is emulated
`auto` is not the default because its choice, and so the numbers a run produces, then depend on
the machine; the log line says which policy it chose and why.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of every visible GPU, from TensorFlow's device details."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability:
            found.append(tuple(int(v) for v in capability))
    return found


def choose(setting: str, on_gpu: bool, capabilities: Optional[Sequence[tuple[int, int]]] = None,
           flags: Optional[set[str]] = None) -> tuple[str, str]:
    """(policy, reason) for `train.precision`; `capabilities` and `flags` are looked up when None."""
    if setting != "auto":
        return setting, f"train.precision={setting}"
    if on_gpu:
        capabilities = gpu_compute_capabilities() if capabilities is None else list(capabilities)
        if capabilities and min(capabilities) >= (8, 0):
            return "mixed_bfloat16", (f"train.precision=auto: GPU compute capability "
                                      f"{'.'.join(map(str, min(capabilities)))} has bfloat16 tensor cores")
        if capabilities and min(capabilities) >= (7, 0):
            return "mixed_float16", (f"train.precision=auto: GPU compute capability "
                                     f"{'.'.join(map(str, min(capabilities)))} has float16 tensor cores only")
        return "float32", "train.precision=auto: the GPU has no tensor cores (compute capability below 7.0)"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "mixed_bfloat16", "train.precision=auto: this CPU has AMX-BF16 matrix units (amx_bf16 in /proc/cpuinfo)"
    if "avx512_bf16" in flags:
        return "float32", ("train.precision=auto: this CPU has AVX512-BF16 but no AMX-BF16 tiles; bfloat16 "
                           "convolutions gain little there, so float32")
    return "float32", "train.precision=auto: this CPU has no bfloat16 matrix units (no amx_bf16 in /proc/cpuinfo)"
