"""Device and precision are values, resolved once: the same loop runs on cpu and cuda.

`auto` precision: on CUDA, bf16 autocast where the GPU supports it, else fp16 (with a gradient scaler); on a
CPU, fp32. bf16 autocast on CPUs with native bf16 is available as `--precision bf16`.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import UsageError


def resolve_device(name: str | None = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' asked for, but no CUDA GPU is available here: use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device '{name}' is not supported: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    p = (precision or "fp32").lower()
    if p == "fp32":
        return None
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return torch.float16
    raise UsageError(f"unknown precision '{precision}': use fp32, bf16, fp16 or auto")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
