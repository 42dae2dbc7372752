"""Memory a run will need, against the memory there is: checked before the work starts.

- `available()`: what this process can still take: the kernel's MemAvailable (/proc/meminfo), or less when a
  cgroup limit (a container, a Slurm or Kubernetes job) leaves less; on a GPU, its free memory.
- `activation_bytes(model, img_size)`: a model's memory per image at an input size, measured on PyTorch's `meta`
  device: the model is built there (no weights, no arithmetic) and one forward pass (inference) or forward and
  backward pass (training) is dispatched while every tensor made is counted until it is freed; the peak of the
  live bytes, per image, is what a batch adds. It matches what a real CPU step measures (EfficientNet-Lite0 at
  224 px: 11.2 MiB per image for inference against 10.8 measured, 70 for training against 77;
  docs/benchmarks.md, "Memory") and costs about a second for a 224 px ImageNet model, nothing per image.
- `Estimate`: named parts (weights, gradients, optimizer state, activations, decoded cache, processes to start)
  per rank, and `check(estimate, ...)`: refuse with one line (exit 2) when it clearly does not fit, warn when it
  is close, say nothing otherwise; `allow=True` (the commands' `--no-memory-check`) turns the refusal into a
  warning.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from imgclf.core.errors import UsageError

log = logging.getLogger(__name__)

WARN_AT = 0.8  # an estimate above this fraction of what is available is said in a warning
TRAIN_SLACK = 1.15  # a training step's peak over what autograd keeps for backward (measured: 1.06 to 1.23)


def gb(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


# ------------------------------------------------------------------------------------------------ what there is


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is not a number


def _cgroup_room() -> int | None:
    """What this process's cgroup still allows (its limit less its usage), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            return max(0, limit - usage)
    return None


def proc_bytes(path: str, key: str) -> int | None:
    """A `Key:   N kB` field of a Linux /proc file (/proc/meminfo, /proc/self/status) in bytes, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mem_available() -> int | None:
    mem = proc_bytes("/proc/meminfo", "MemAvailable")
    if mem is not None:
        return mem
    try:  # not Linux: free pages (a lower bound of what could be had)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available(device: torch.device | None = None) -> tuple[int | None, str]:
    """(bytes this process can still take, where that number comes from); None when it cannot be known."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    room, mem = _cgroup_room(), _mem_available()
    if room is not None and (mem is None or room < mem):
        return room, "left under this cgroup's memory limit"
    return mem, "available"


def resident() -> int:
    """This process's resident memory now (VmRSS), 0 where it cannot be read."""
    return proc_bytes("/proc/self/status", "VmRSS") or 0


# ------------------------------------------------------------------------------------------------ what it takes


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor an op makes until its storage is freed; keeps the peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _freed(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._freed, key)
        return out


def _input(n: int, img_size: int, channels_last: bool) -> torch.Tensor:
    x = torch.zeros(n, 3, img_size, img_size, device="meta")
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _inference_peak(model: nn.Module, x: torch.Tensor) -> int:
    """The peak of live tensor bytes during an inference pass (nothing outlives its use: storages die with their
    tensors, so counting until Python frees them is exact)."""
    counter = _LiveBytes()
    with torch.inference_mode(), counter:
        model(x)
    return counter.peak


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """The bytes a training forward pass keeps for the backward pass (autograd's saved tensors, each storage
    once, the weights not counted)."""
    weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    kept: list[torch.Tensor] = []

    def pack(t):
        kept.append(t)  # held until counted, so that no storage is freed and its address taken by another
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    sizes = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in kept}
    return sum(v for k, v in sizes.items() if k not in weights)


@dataclass(frozen=True)
class PerImage:
    train: int  # bytes a training step adds per image of its batch (forward and backward)
    infer: int  # bytes an inference batch adds per image


def activation_bytes(build: Callable[[], nn.Module], img_size: int, *, channels_last: bool = True) -> PerImage:
    """Memory per image of the model `build()` makes (called under `torch.device("meta")`; it should freeze what
    the run freezes) at `img_size`, measured on the meta device with a batch of 2: for inference, the peak of live
    tensors; for training, what autograd keeps for the backward pass times TRAIN_SLACK (the backward pass's own
    gradients of activations; on CPU steps of ResNet-18 at 224 px, airnet at 32 and EfficientNet-Lite0 at 224 the
    peak measured 1.23, 1.06 and 1.11 times the kept bytes)."""
    with torch.device("meta"):
        model = build()
    model = model.to(memory_format=torch.channels_last) if channels_last else model
    x = _input(2, img_size, channels_last)
    model.eval()
    infer = _inference_peak(model, x) // 2
    if not any(p.requires_grad for p in model.parameters()):
        return PerImage(train=infer, infer=infer)
    model.train()
    train = int(_saved_bytes(model, x) / 2 * TRAIN_SLACK)
    return PerImage(train=max(train, infer), infer=infer)


_MEASURED: dict[tuple, PerImage] = {}


def cached_activation_bytes(key: tuple, build: Callable[[], nn.Module], img_size: int, channels_last: bool):
    """`activation_bytes` measured once per process for `key` (what `build` makes: the model, its freezing),
    `img_size` and `channels_last`."""
    full = (*key, img_size, channels_last)
    if full not in _MEASURED:
        _MEASURED[full] = activation_bytes(build, img_size, channels_last=channels_last)
    return _MEASURED[full]


def tensor_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of all parameters and buffers, bytes of the trainable parameters) of `model` (meta works)."""
    every = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return every, trainable


# ------------------------------------------------------------------------------------------------ the check


@dataclass
class Estimate:
    """What a command will take: `parts` (name -> bytes) per rank, times `ranks`, plus `shared` (name -> bytes,
    once for all ranks)."""

    what: str  # "this run", "bench"
    parts: dict[str, int] = field(default_factory=dict)
    ranks: int = 1
    shared: dict[str, int] = field(default_factory=dict)

    @property
    def per_rank(self) -> int:
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        return self.per_rank * self.ranks + sum(self.shared.values())

    def describe(self) -> str:
        small = 0.01 * self.total  # parts under 1% of the whole are left out of the line
        parts = ", ".join(f"{k} {gb(v)}" for k, v in self.parts.items() if v and v >= small)
        head = f"{self.ranks} ranks x {gb(self.per_rank)}: " if self.ranks > 1 else ""
        extra = "".join(f", {k} {gb(v)}" for k, v in self.shared.items() if v and v >= small)
        return f"{head}{parts}{extra}"


def check(estimate: Estimate, room: int | None, source: str, *, lower: str, allow: bool = False) -> str | None:
    """Refuse (UsageError: one line, exit 2) when `estimate` is over `room` bytes, unless `allow`; warn when it
    is over WARN_AT of it. `lower`: what to change, named in the line. Returns the warning or refusal said (None
    when it fits or when the room is unknown)."""
    if room is None:
        return None
    need = estimate.total
    line = f"{estimate.what} needs about {gb(need)} of memory ({estimate.describe()}) and {gb(room)} is {source}"
    if need > room:
        if not allow:
            raise UsageError(f"{line}: {lower}, or pass --no-memory-check to start anyway")
        log.warning("%s; starting anyway (--no-memory-check)", line)
        return line
    if need > WARN_AT * room:
        log.warning("%s: close to the limit; if it runs out of memory, %s", line, lower)
        return line
    return None
