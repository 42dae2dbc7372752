"""Training throughput: imgclf's fast path against the seed's pipeline, measured in the same run.

torchvision ResNet-18 (ImageNet stem, random init), every layer training, batch 128, 32 px CIFAR-10 JPEGs, SGD
0.01/0.9/5e-4, flip + padded random crop. The seed: `../shared/bench/seed_baseline.py ROOT full STEPS WORKERS`
(ImageFolder + PIL transforms + DataLoader). imgclf: the decoded-image cache (built before timing, as a run
builds it once and later runs reuse it), whole-batch augmentation, channels_last, and the very `train_steps`
the training loop calls. Rounds alternate seed / imgclf; medians and the ratio of medians are printed.
With --compile, each round also times imgclf with `torch.compile` (as `imgclf train --compile`): its compile
time (the warm-up steps, which compile) and its steady images/s, and the steps after which compiling pays.

    .venv/bin/python benchmarks/train_throughput.py [--root ../shared/data/cifar10-jpg] [--steps 30] [--rounds 3] [--compile]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def seed_images_per_second(root: str, steps: int, workers: int) -> float:
    out = subprocess.run(
        [sys.executable, str(SHARED / "bench" / "seed_baseline.py"), root, "full", str(steps), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"([\d.]+) train images/s", out).group(1))


def imgclf_images_per_second(root: str, steps: int, precision: str, channels_last: bool, compile: bool = False):
    """In a fresh process, like the seed's script: imports and set-up are not timed, the steps are. With
    `compile`: (images/s, seconds of the 3 warm-up steps, which include compiling)."""
    code = f"""
import os, time, torch
from torch import nn
from imgclf.cli.main import request_huge_pages
request_huge_pages()
from imgclf.data.feed import make_feed
from imgclf.core.artifact import Preprocess
from imgclf.data.sources import open_source
from imgclf.compute.device import to_layout, training_precision
from imgclf.models.registry import build_model
from imgclf.training.trainer import train_steps
src = open_source({root!r})
prep = Preprocess(img_size=32, resize=32, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
feed, _ = make_feed(src.splits["train"], prep, cache="disk", workers=2, batch_size=128)
dev = torch.device("cpu")
torch.manual_seed(0)
m = to_layout(build_model("resnet18", 10), {channels_last!r}); m.train()
amp = training_precision({precision!r}, dev, m, key="resnet18", img_size=32, batch_size=128, channels_last={channels_last!r})
print("PRECISION", amp)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
scaler = torch.amp.GradScaler("cpu", enabled=False); crit = nn.CrossEntropyLoss()
gen = torch.Generator().manual_seed(0)
batches = feed.epoch(gen)
step_model = torch.compile(m) if {compile!r} else m
t = time.perf_counter()
train_steps(step_model, batches, crit, opt, scaler, dev, amp, channels_last={channels_last!r}, max_steps=3)
print("WARMUP", time.perf_counter() - t)
t = time.perf_counter()
_, _, n = train_steps(step_model, feed.epoch(gen), crit, opt, scaler, dev, amp, channels_last={channels_last!r}, max_steps={steps})
print("IPS", n / (time.perf_counter() - t))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ips = float(re.search(r"IPS ([\d.]+)", out).group(1))
    return (ips, float(re.search(r"WARMUP ([\d.]+)", out).group(1))) if compile else ips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(SHARED / "data" / "cifar10-jpg"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed-workers", type=int, default=4, help="the seed script's DataLoader workers (its default: 4)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time imgclf with torch.compile each round")
    args = ap.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    # build the decoded cache once, untimed (a run does this once; later runs reuse the file)
    t = time.perf_counter()
    imgclf_images_per_second(args.root, 1, args.precision, True)
    print(f"decoded cache ready ({time.perf_counter() - t:.0f} s including a 1-step warm-up)", flush=True)
    seed, ours, compiled, warm = [], [], [], []
    for r in range(args.rounds):
        seed.append(seed_images_per_second(args.root, args.steps, args.seed_workers))
        ours.append(imgclf_images_per_second(args.root, args.steps, args.precision, True))
        if args.compile:
            ips, warmup = imgclf_images_per_second(args.root, args.steps, args.precision, True, compile=True)
            compiled.append(ips)
            warm.append(warmup)
            print(f"round {r + 1}: imgclf --compile {ips:.0f} img/s after {warmup:.1f} s of warm-up steps", flush=True)
        print(
            f"round {r + 1}: seed {seed[-1]:.0f} img/s, imgclf {ours[-1]:.0f} img/s, ratio {ours[-1] / seed[-1]:.2f}",
            flush=True,
        )
    ms, mo = statistics.median(seed), statistics.median(ours)
    print(
        f"median over {args.rounds} rounds ({args.steps} steps each, batch 128): seed {ms:.0f} img/s, "
        f"imgclf {mo:.0f} img/s, ratio {mo / ms:.2f}x  [{os.cpu_count()} cores]"
    )
    if args.compile:
        mc, mw = statistics.median(compiled), statistics.median(warm)
        eager_step, compiled_step = 128 / mo, 128 / mc  # seconds a step
        pays = (mw - 3 * eager_step) / (eager_step - compiled_step) if compiled_step < eager_step else None
        print(
            f"imgclf --compile: {mc:.0f} img/s ({mc / mo:.2f}x eager, {mc / ms:.2f}x the seed), warm-up "
            f"{mw:.1f} s for 3 steps; "
            + (f"pays after about {pays:.0f} steps" if pays is not None else "never pays (not faster per step)")
        )


if __name__ == "__main__":
    main()
