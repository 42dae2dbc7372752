"""Inference speed of checkpoints and exported files, side by side, measured in one run.

For each input and batch size: warm up, then time the model on the same real preprocessed images (random
ones without --data), in rounds that visit every setting in turn, so a change in the machine's load (a
shared CPU) touches every setting alike instead of whichever happened to run then. Latency per batch is the
median (p50) and 90th percentile over all timed iterations; images/s = batch size / p50.

A checkpoint is run eagerly in several settings: `eager-fp32` (NCHW, as the seed ran it: the baseline),
`eager-fp32-cl` (channels_last, imgclf's default) and `eager-bf16-cl` (bf16 autocast + channels_last, the best
eager setting on CPUs with native bf16; emulated, hence slow, on CPUs without it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from imgclf.compute import memory
from imgclf.core.errors import UsageError, did_you_mean
from imgclf.exporting.verify import accuracy_on, sample_images
from imgclf.infer.runtime import CheckpointRunner, Runner, open_model
from imgclf.models.registry import build_model

log = logging.getLogger(__name__)

EAGER = {  # name -> (precision, channels_last)
    "fp32": ("fp32", False),
    "fp32-cl": ("fp32", True),
    "bf16-cl": ("bf16", True),
}


@dataclass
class Setting:
    input: str
    label: str  # what the table's format column shows
    runner: Runner
    size_bytes: int


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes '{text}': give comma-separated numbers, e.g. 1,32") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes '{text}': give comma-separated numbers of at least 1, e.g. 1,32")
    return sizes


def open_settings(inputs: list[str], *, eager: list[str], device: str = "cpu") -> list[Setting]:
    out = []
    for e in eager:
        if e not in EAGER:
            raise UsageError(f"--eager '{e}': use {', '.join(EAGER)}{did_you_mean(e, EAGER)}")
    for path in inputs:
        first = open_model(path, device=device, precision="fp32")
        size = os.path.getsize(path)
        if isinstance(first, CheckpointRunner):
            for e in eager:
                precision, cl = EAGER[e]
                r = CheckpointRunner(path, device=device, precision=precision, channels_last=cl, ckpt=first.ckpt)
                out.append(Setting(path, f"eager-{e}", r, size))
        else:
            out.append(Setting(path, first.format, first, size))
    return out


def _images(settings: list[Setting], data: str | None, split: str, n: int, data_root: str | None) -> torch.Tensor:
    prep = settings[0].runner.preprocess
    for s in settings[1:]:
        if s.runner.preprocess.img_size != prep.img_size:
            raise UsageError(
                f"inputs take different image sizes ({prep.img_size} and {s.runner.preprocess.img_size} px): "
                f"bench one model at a time"
            )
    if data:
        cfg = settings[0].runner.config
        x, _ = sample_images(
            data,
            prep,
            split=split,
            n=n,
            data_root=data_root or cfg.get("data_root"),
            val_fraction=cfg.get("val_fraction", 0.2),
            seed=cfg.get("seed", 0),
        )
        return x
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, prep.img_size, prep.img_size, generator=g)


def bench(
    inputs: list[str],
    *,
    batch_sizes=(1, 32),
    data: str | None = None,
    split: str = "val",
    data_root: str | None = None,
    eager=("fp32", "fp32-cl", "bf16-cl"),
    warmup: int = 2,
    iters: int = 10,
    rounds: int = 3,
    max_seconds: float = 60.0,
    accuracy: bool = True,
    max_eval_images: int | None = None,
    device: str = "cpu",
    memory_check: bool = True,
) -> list[dict]:
    """One row per (input setting, batch size): latency p50/p90 (ms per batch), images/s, file size, and with
    `data` the top-1 accuracy on `split`. `iters` timed iterations per setting are split over `rounds` rounds;
    a setting whose batches are slow stops early after `max_seconds` of timing (at least 3 iterations).
    Batch sizes that will not fit in memory are refused before any is made (`memory_check=False`: a warning)."""
    if not inputs:
        raise UsageError("bench needs at least one checkpoint or exported file")
    batch_sizes = [int(b) for b in batch_sizes]
    if iters < 1 or rounds < 1 or warmup < 0:
        raise UsageError("--iters and --rounds must be at least 1, --warmup at least 0")
    settings = open_settings(list(inputs), eager=list(eager), device=device)
    check_memory(settings, batch_sizes, allow=not memory_check)
    x = _images(settings, data, split, max(batch_sizes), data_root)
    batches = {b: x[torch.arange(b) % len(x)].contiguous() for b in batch_sizes}
    times = _time(settings, batch_sizes, batches, Rounds(warmup, iters, rounds, max_seconds))
    accs: dict[int, float | dict | None] = {}
    n_eval = None
    if data and accuracy:
        cfg = settings[0].runner.config
        for i, s in enumerate(settings):
            a, n_eval, _ = accuracy_on(
                [s.runner], data, split=split, data_root=data_root, config=cfg, max_images=max_eval_images
            )
            accs[i] = a[0]
    return [
        _row(s, b, np.asarray(times[(i, b)]), accs.get(i), n_eval if accs else None)
        for i, s in enumerate(settings)
        for b in batch_sizes
    ]


def estimate(settings: list[Setting], batch_sizes: list[int]) -> tuple[memory.Estimate, int]:
    """(what bench takes, bytes per image of the largest batch). It holds the input images in host memory (one
    tensor of the largest batch, and a copy per batch size) and runs the largest batch through the model (its
    activations per image as measured on the meta device for the model the inputs hold: compute/memory.py;
    counted where the model runs on the CPU)."""
    r = settings[0].runner
    image = 3 * r.preprocess.img_size**2 * 4  # float32 pixels
    per = 0
    if all(getattr(s.runner, "device", torch.device("cpu")).type == "cpu" for s in settings):
        try:
            per = memory.cached_activation_bytes(
                (r.model_name, len(r.classes), "eval"),
                lambda: build_model(r.model_name, len(r.classes), pretrained=False),
                r.preprocess.img_size,
                True,
            ).infer
        except Exception as e:  # a model the registry cannot build: the images alone
            log.debug("bench: activations not estimated (%s)", e)
    top = max(batch_sizes)
    parts = {
        f"{top + sum(batch_sizes)} input images at {r.preprocess.img_size} px": (top + sum(batch_sizes)) * image,
        f"activations of {top} images": top * per,
    }
    return memory.Estimate("bench", parts), 2 * image + per


def check_memory(settings: list[Setting], batch_sizes: list[int], *, allow: bool = False) -> None:
    """Refuse batch sizes that will not fit in the memory available (one line, exit 2), before any is made."""
    est, per_image = estimate(settings, batch_sizes)
    room, source = memory.available()
    fits = int(memory.WARN_AT * room // per_image) if room else 0
    lower = f"lower --batch-sizes (about {fits} images in the largest batch fit)" if fits else "lower --batch-sizes"
    memory.check(est, room, source, lower=lower, allow=allow)


@dataclass(frozen=True)
class Rounds:
    """How each setting is timed: `warmup` untimed calls, then `iters` timed ones spread over `rounds` rounds
    that visit every setting in turn, a setting stopping after `max_seconds` of timing (at least 3 calls)."""

    warmup: int
    iters: int
    rounds: int
    max_seconds: float


def _time(
    settings: list[Setting], batch_sizes: list[int], batches: dict, how: Rounds
) -> dict[tuple[int, int], list[float]]:
    """Seconds per call of each (setting index, batch size); `batches`: the input of each batch size."""
    times: dict[tuple[int, int], list[float]] = {(i, b): [] for i in range(len(settings)) for b in batch_sizes}
    spent: dict[tuple[int, int], float] = {k: 0.0 for k in times}
    for s in settings:  # warm-up: first-call allocation, oneDNN primitive / ORT kernel selection
        for b in batch_sizes:
            for _ in range(how.warmup):
                s.runner.logits(batches[b])
    per_round = max(1, -(-how.iters // how.rounds))
    for _ in range(how.rounds):
        for i, s in enumerate(settings):
            for b in batch_sizes:
                key = (i, b)
                for _ in range(per_round):
                    if len(times[key]) >= how.iters or (spent[key] >= how.max_seconds and len(times[key]) >= 3):
                        break
                    t = time.perf_counter()
                    s.runner.logits(batches[b])
                    dt = time.perf_counter() - t
                    times[key].append(dt)
                    spent[key] += dt
        log.debug("bench round done")
    return times


def _row(s: Setting, b: int, ts: np.ndarray, accuracy: float | dict | None, eval_images: int | None) -> dict:
    """One row of the table; `accuracy` of a multi-label model is its mAP and micro-F1 (verify.accuracy_on)."""
    p50, p90 = float(np.percentile(ts, 50)), float(np.percentile(ts, 90))
    multi = accuracy if isinstance(accuracy, dict) else None
    row = {
        "input": s.input,
        "format": s.label,
        "model": s.runner.model_name,
        "img_size": s.runner.preprocess.img_size,
        "batch_size": b,
        "latency_p50_ms": 1000 * p50,
        "latency_p90_ms": 1000 * p90,
        "images_per_s": b / p50,
        "iterations": int(len(ts)),
        "size_mb": s.size_bytes / 2**20,
        "accuracy": None if multi else accuracy,
        "eval_images": eval_images,
        "threads": torch.get_num_threads(),
    }
    if multi:
        row.update(mAP=multi["mAP"], micro_f1=multi["micro_f1"])
    return row


def format_table(rows: list[dict]) -> str:
    key = "mAP" if any("mAP" in r for r in rows) else "accuracy"  # a multi-label model's: its mAP
    has_acc = any(r.get(key) is not None for r in rows)
    head = (
        f"{'format':<15} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'images/s':>9} {'size MB':>8}"
        + (f" {key:>9}" if has_acc else "")
        + "  file"
    )
    lines = [head]
    for r in rows:
        acc = (f" {r[key]:9.4f}" if r.get(key) is not None else f" {'-':>9}") if has_acc else ""
        lines.append(
            f"{r['format']:<15} {r['batch_size']:>5} {r['latency_p50_ms']:9.1f} {r['latency_p90_ms']:9.1f} "
            f"{r['images_per_s']:9.1f} {r['size_mb']:8.1f}{acc}  {os.path.basename(r['input'])}"
        )
    base = {r["batch_size"]: r["images_per_s"] for r in rows if r["format"] == "eager-fp32"}
    if base:
        lines.append("speed-up against eager-fp32 (NCHW, the seed's baseline) at the same batch size:")
        for r in rows:
            if r["batch_size"] in base and r["format"] != "eager-fp32":
                lines.append(
                    f"  {r['format']:<15} batch {r['batch_size']:>3}: {r['images_per_s'] / base[r['batch_size']]:.2f}x"
                )
    return "\n".join(lines)
