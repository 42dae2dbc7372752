"""CIFAR-10 from scratch in a fixed time: the seed's recipe against `imgclf train --recipe fast`, same run.

The seed: `../shared/bench/seed_recipe.py ROOT EPOCHS` (torchvision ResNet-18, SGD 0.01, StepLR, batch 128),
which prints test accuracy and elapsed seconds after each epoch; its figure is the test accuracy of the last
epoch that ended within the budget (its elapsed time includes its own test pass each epoch).
imgclf: `imgclf train --recipe fast --time-budget MINUTES`, whose schedule is fitted to the budget (elapsed
time includes validating 1,000 held-out images with test-time augmentation after each epoch), then
`imgclf evaluate best.pt --split test`.

    .venv/bin/python benchmarks/fast_recipe.py [--data ../shared/data/cifar10-jpg] [--minutes 5] [--seed 0]

Run it on an otherwise idle machine: both sides are timed by wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
IMGCLF = [sys.executable, "-m", "imgclf"]


def seed_within(data: str, minutes: float) -> tuple[float | None, int, float]:
    """(test accuracy of the last epoch ended within the budget, that epoch, its elapsed seconds)."""
    budget = minutes * 60
    epochs = 1000  # stopped by the budget, not by this
    proc = subprocess.Popen(
        [sys.executable, str(SHARED / "bench" / "seed_recipe.py"), data, str(epochs)], stdout=subprocess.PIPE, text=True
    )
    best = (None, 0, 0.0)
    timer = threading.Timer(budget + 10, proc.kill)  # no epoch can end within the budget after this
    timer.start()
    try:
        for line in proc.stdout:
            print("  seed:", line.strip(), flush=True)
            parts = line.split()
            if len(parts) >= 6 and parts[0] == "epoch":
                ep, acc, elapsed = int(parts[1]), float(parts[3]) / 100, float(parts[5])
                if elapsed <= budget:
                    best = (acc, ep, elapsed)
                else:
                    break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    return best


def imgclf_within(data: str, minutes: float, seed: int) -> tuple[float, float, dict]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            IMGCLF
            + [
                "-q",
                "train",
                "--data",
                data,
                "--recipe",
                "fast",
                "--time-budget",
                str(minutes),
                "--seed",
                str(seed),
                "--out",
                out,
                "--name",
                "fast",
            ],
            check=True,
        )
        results = json.load(open(os.path.join(out, "fast", "results.json")))
        res = subprocess.run(
            IMGCLF + ["-q", "evaluate", os.path.join(out, "fast", "best.pt"), "--split", "test", "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return json.loads(res)["accuracy"], results["train_seconds"], results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10-jpg"))
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    acc, train_s, res = imgclf_within(args.data, args.minutes, args.seed)
    print(
        f"  imgclf: test_acc {100 * acc:.2f} after {train_s:.0f} s of training ({res['steps']} steps, "
        f"{res['epochs']} epochs)",
        flush=True,
    )
    s_acc, s_ep, s_el = seed_within(args.data, args.minutes)
    print(f"CIFAR-10 from scratch within {args.minutes:g} minutes of training on {args.data}")
    print(f"  imgclf --recipe fast: test accuracy {acc:.4f} ({train_s:.0f} s)")
    if s_acc is None:
        print("  seed recipe:          no epoch finished within the budget")
    else:
        print(f"  seed recipe:          test accuracy {s_acc:.4f} (epoch {s_ep}, {s_el:.0f} s)")
        print(
            f"  accuracy ratio {acc / s_acc:.2f}x; error rate {1 - acc:.4f} vs {1 - s_acc:.4f} "
            f"({(1 - s_acc) / max(1e-9, 1 - acc):.2f}x fewer errors)"
        )


if __name__ == "__main__":
    main()
