"""Device and precision are values, resolved once: the same loop runs on cpu and cuda.

Precision `auto` means two different things, on purpose:

- **Inference** (`predict`, `evaluate`, `serve`, `bench`, exports' reference): fp32 on every device, so a
  checkpoint answers the same as its fp32 exports (within 1e-4 in probability) on every machine. bf16 is there
  for those who ask (`--precision bf16`): it can change answers (docs/benchmarks.md, the Intel Xeon class).
- **Training**: whatever is fastest on the machine at hand, never slower than fp32. On CUDA, bf16 autocast where
  the GPU supports it, else fp16 with a gradient scaler. On a CPU without native bf16 (no AVX512-BF16, no AMX)
  fp32, without measuring: bf16 is emulated there, several times slower. On a CPU with native bf16, a short
  probe decides: a few interleaved training steps of the very model, batch size and input size in fp32 and in
  bf16 autocast, on random tensors; bf16 only when it is at least 5% faster, because whether it is depends on
  the CPU class and the model (docs/benchmarks.md has the figures per class). The result is cached per machine
  and model in `$IMGCLF_CACHE/precision.json` (default `~/.cache/imgclf/precision.json`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import statistics
import time

import torch

from imgclf.core.cpu import cpu_info, cpu_isa
from imgclf.core.errors import UsageError
from imgclf.core.fileio import user_cache_home, write_json

log = logging.getLogger(__name__)

# bf16 must beat fp32 by this factor (time per step) before `auto` trains in it: within noise, fp32 wins.
BF16_MIN_SPEEDUP = 1.05
PROBE_ROUNDS = 3  # timed steps per precision, interleaved fp32 / bf16 so that load and clock drift cancel
# A step slower than this is probed at a proportionally smaller batch (at least 8), so that every probe gets its
# PROBE_ROUNDS rounds within seconds: a large model's full-batch step can take many seconds on a small CPU, and a
# single round of it, taken while another job ran, once chose the wrong precision (docs/benchmarks.md, Zen 4).
PROBE_STEP_SECONDS = 1.5


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


def cpu_has_native_bf16() -> bool:
    isa = cpu_isa()
    if isa["AVX512-BF16"] or isa["AMX"]:
        return True
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()  # where /proc/cpuinfo is missing
    return "BF16" in cap or "AMX" in cap


def _explicit_precision(p: str, device: torch.device) -> torch.dtype | None:
    if p == "fp32":
        return None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return torch.float16
    raise UsageError(f"unknown precision '{p}': use fp32, bf16, fp16 or auto")


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype | None:
    """Inference: the autocast dtype, or None for plain fp32. `auto` is fp32 everywhere (see the module doc)."""
    p = (precision or "auto").lower()
    return None if p == "auto" else _explicit_precision(p, device)


def training_precision(
    precision: str | None,
    device: torch.device,
    model: torch.nn.Module | None = None,
    *,
    img_size: int = 224,
    batch_size: int = 32,
    channels_last: bool = True,
    key: str | None = None,
) -> torch.dtype | None:
    """Training: the autocast dtype, or None for fp32. `auto` follows the rule or the probe in the module doc;
    `model` (left untouched: the probe trains a copy) and `key` (e.g. the model's name) are needed only for the
    probe."""
    p = (precision or "auto").lower()
    if p != "auto":
        return _explicit_precision(p, device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if not cpu_has_native_bf16() or model is None:
        return None
    result = probe_bf16(
        model, key=key or type(model).__name__, img_size=img_size, batch_size=batch_size, channels_last=channels_last
    )
    return torch.bfloat16 if result["choice"] == "bf16" else None


def machine_key() -> str:
    """What a cached probe result depends on besides the model: the CPU, its kernels' ISA cap, torch, threads."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "") + "/" + os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    isa = "+".join(k for k, v in cpu_isa().items() if v)
    return f"{cpu_info()['model']}|{isa}|cap={cap}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def precision_cache_path() -> str:
    return os.path.join(os.environ.get("IMGCLF_CACHE") or user_cache_home(), "precision.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_probes() -> dict:
    """This machine's cached probe results, by model key."""
    mk = machine_key()
    return {
        k.split("||", 1)[1]: v
        for k, v in _read_cache(precision_cache_path()).items()
        if isinstance(v, dict) and k.startswith(mk + "||")
    }


def probe_bf16(
    model: torch.nn.Module,
    *,
    key: str,
    img_size: int,
    batch_size: int,
    channels_last: bool = True,
    refresh: bool = False,
) -> dict:
    """Time training steps of a copy of `model` in fp32 and bf16 autocast on this CPU; cached.

    Returns {"choice": "fp32"|"bf16", "fp32_ms", "bf16_ms", "speedup", "cached": bool}."""
    model_key = f"{key}|{img_size}px|batch {batch_size}|{'channels_last' if channels_last else 'NCHW'}"
    cache_path = precision_cache_path()
    full_key = f"{machine_key()}||{model_key}"
    cache = _read_cache(cache_path)
    if not refresh and isinstance(cache.get(full_key), dict) and cache[full_key].get("choice") in ("fp32", "bf16"):
        return {**cache[full_key], "cached": True}
    t0 = time.perf_counter()
    times, probe_batch = _time_steps(model, img_size=img_size, batch_size=batch_size, channels_last=channels_last)
    fp32, bf16 = statistics.median(times[None]), statistics.median(times[torch.bfloat16])
    speedup = fp32 / bf16
    result = {
        "choice": "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32",
        "fp32_ms": round(1000 * fp32, 2),
        "bf16_ms": round(1000 * bf16, 2),
        "speedup": round(speedup, 3),
        "probe_batch": probe_batch,
        "rounds": len(times[None]),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    log.info(
        "precision auto: %s (training step %s, timed at batch %d: fp32 %.1f ms, bf16 %.1f ms, %d rounds, "
        "probe took %.1f s)",
        result["choice"],
        model_key,
        probe_batch,
        result["fp32_ms"],
        result["bf16_ms"],
        len(times[None]),
        time.perf_counter() - t0,
    )
    cache[full_key] = result
    try:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        write_json(cache, cache_path)
    except OSError as e:  # a read-only home: the choice still holds for this run
        log.debug("could not cache the precision probe in %s: %s", cache_path, e)
    return {**result, "cached": False}


def _time_steps(model: torch.nn.Module, *, img_size: int, batch_size: int, channels_last: bool) -> tuple[dict, int]:
    """Seconds per training step of a copy of `model`, ({None: [...], torch.bfloat16: [...]}, the batch timed),
    interleaved fp32 / bf16; a slow step is timed at a smaller batch (PROBE_STEP_SECONDS)."""
    device = torch.device("cpu")
    probe = to_layout(copy.deepcopy(model).to(device).train(), channels_last)
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    with torch.random.fork_rng(devices=[]):  # the run's own random stream stays where it was
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # the class count, in eval mode: BatchNorm cannot train on one image
            n_out = probe.eval()(torch.zeros(1, 3, img_size, img_size)).shape[1]
        probe.train()
        batch: dict = {}

        def make(n: int) -> None:
            batch["x"] = to_layout(torch.randn(n, 3, img_size, img_size, generator=gen), channels_last)
            batch["y"] = torch.randint(0, n_out, (n,), generator=gen)

        def step(dtype) -> float:
            t = time.perf_counter()
            with autocast(device, dtype):
                loss = torch.nn.functional.cross_entropy(probe(batch["x"]), batch["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t

        make(batch_size)
        first = step(None)  # warm-up: oneDNN builds its kernels for each precision and shape on the first step
        if first > PROBE_STEP_SECONDS and batch_size > 8:
            make(max(8, int(batch_size * PROBE_STEP_SECONDS / first)))
            step(None)
        step(torch.bfloat16)
        times: dict = {None: [], torch.bfloat16: []}
        for _ in range(PROBE_ROUNDS):
            for dtype in times:
                times[dtype].append(step(dtype))
    return times, len(batch["y"])


def to_layout(x, channels_last: bool):
    """Models and 4-d batches in channels_last: oneDNN's depthwise and 3x3 kernels prefer NHWC, so models train
    faster than in the default layout (by how much, per model: docs/benchmarks.md)."""
    if channels_last and (isinstance(x, torch.nn.Module) or x.dim() == 4):
        return x.to(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
