"""The CPU this process runs on, from /proc/cpuinfo (torch-free: the slim server asks it too): its name and the x86
instruction sets that decide which kernels run (`imgclf env` shows them), and whether onnxruntime computes 8-bit
int8 weights exactly here (`int8_8bit_exact`).
"""

from __future__ import annotations

import functools
import platform

# x86 flags from /proc/cpuinfo that decide which kernels run, with the names people know them by.
ISA_FLAGS = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AVX512-BF16": ("avx512_bf16",),
    "AVX512-FP16": ("avx512_fp16",),
    "AMX": ("amx_tile", "amx_bf16", "amx_int8"),
}


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model": CPU model name, "flags": set of /proc/cpuinfo flags} (empty flags where there is no such file)."""
    model, flags, ids = platform.processor() or platform.machine(), set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("cpu family", "model"):
                    ids[key] = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if flags and key == "":  # the first processor's block is enough
                    break
    except OSError:
        pass
    if len(ids) == 2:  # a VM may hide the name ("AMD EPYC"): family 25 model 17 is Zen 4, family 23 is Zen 2/3 ...
        model += f" (family {ids['cpu family']}, model {ids['model']})"
    return {"model": model, "flags": flags}


def cpu_isa() -> dict:
    """{"AVX2": True, "AVX-512": False, ...}: which of ISA_FLAGS this CPU has."""
    flags = cpu_info()["flags"]
    return {name: any(f in flags for f in names) for name, names in ISA_FLAGS.items()}


X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def int8_8bit_exact() -> bool:
    """Whether onnxruntime's CPU kernels compute int8 models with 8-bit weights exactly here: on x86 only with
    VNNI (AVX512-VNNI or AVX-VNNI); without it they add pairs of uint8 x int8 products in int16 (VPMADDUBSW),
    which saturates (exporting/int8.py). Other architectures' kernels widen first."""
    if platform.machine().lower() not in X86:
        return True
    return cpu_isa()["VNNI"]
