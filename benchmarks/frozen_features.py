"""`--freeze backbone` end to end: the frozen-feature cache against the same run with every cache off.

Both are complete `imgclf train` commands (process start, data, 30 epochs, checkpoints, plots), timed by wall
clock in the same run, followed by `imgclf evaluate` of each best.pt on val:

    imgclf train --data hymenoptera --model efficientnet_lite0 --pretrained --freeze backbone --epochs 30
    imgclf train ...same... --cache none        (per-image decoding and transforms every epoch, no feature cache)

    .venv/bin/python benchmarks/frozen_features.py [--data ../shared/data/hymenoptera] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
IMGCLF = [sys.executable, "-m", "imgclf"]


def run(args, out, name, cache_dir):
    env = {**os.environ, "IMGCLF_CACHE": cache_dir}
    t = time.perf_counter()
    subprocess.run(IMGCLF + ["-q", "train", *args, "--out", out, "--name", name], check=True, env=env)
    seconds = time.perf_counter() - t
    res = subprocess.run(
        IMGCLF + ["-q", "evaluate", os.path.join(out, name, "best.pt"), "--split", "val", "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return seconds, json.loads(res)["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "hymenoptera"))
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    common = [
        "--data",
        args.data,
        "--model",
        args.model,
        "--pretrained",
        "--freeze",
        "backbone",
        "--epochs",
        str(args.epochs),
    ]
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        # a fresh, empty decoded-image cache: the cached run pays for building it
        fast_s, fast_acc = run(common, out, "cached", cache)
        slow_s, slow_acc = run(common + ["--cache", "none"], out, "nocache", cache)
    print(f"{args.model} --freeze backbone, {args.epochs} epochs on {args.data}")
    print(f"  feature cache (default): {fast_s:7.1f} s end to end, val accuracy {fast_acc:.4f}")
    print(f"  --cache none:            {slow_s:7.1f} s end to end, val accuracy {slow_acc:.4f}")
    print(
        f"  speed-up {slow_s / fast_s:.1f}x, accuracy difference {100 * (fast_acc - slow_acc):+.2f} points "
        f"[{os.cpu_count()} cores]"
    )


if __name__ == "__main__":
    main()
