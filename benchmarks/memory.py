"""Peak resident memory of the README's commands, one at a time, for docs/benchmarks.md ("Memory").

    .venv/bin/python benchmarks/memory.py [--out /tmp/imgclf-memory] [--only NAME,...] [--lite0-batch 128]
                                          [--fast-minutes 2] [--files 200000] [--requests 2000]

Each command runs as a subprocess of this script (benchmarks/memtrack.py) and is reported by:
- tree RSS peak: the largest sum of VmRSS over the command and every process it started (DataLoader workers,
  the server, torchrun's ranks), sampled every 50 ms. Shared pages (a memory-mapped decoded cache, the libraries)
  count once per process.
- tree PSS peak: the same in proportional set size (a page shared by k processes counts 1/k each): what the tree
  takes from the machine. Sampled every 200 ms.
- largest process: the kernel's high-water mark (VmHWM) of the largest single process, exact, not summed.
Run it alone on the machine (nothing is timed, but other processes' pressure can make the kernel reclaim pages).

The steps, in order (later ones use what earlier ones wrote, under --out):
  digits          train --data digits --model smallcnn --augment none --epochs 10        (README quick start)
  ants-frozen     train --data hymenoptera --model efficientnet_lite0 --pretrained --freeze backbone --epochs 10
  ants-full       the same with --freeze none --epochs 1 --batch-size --lite0-batch       (full fine-tuning)
  fast            train --data cifar10-jpg --recipe fast --time-budget --fast-minutes     (a time-bounded run)
  evaluate        evaluate ants-frozen's best.pt --split val, and the fast run's --split test
  predict         predict digits' best.pt over --files generated 8x8 PNG files (--files-from, --output CSV)
  export          export ants-frozen's best.pt --format onnx-int8
  serve           benchmarks/serve_load.py on that export: 32 concurrent clients, --requests requests
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memtrack import measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
PY = sys.executable


def imgclf(*args: str) -> list[str]:
    return [PY, "-m", "imgclf", *args]


def make_files(folder: str, n: int) -> tuple[str, int]:
    """`n` 8x8 grey PNG files (digits-like) under folder, 1,000 a subfolder, and a list of them; (list, bytes).
    256 distinct images are encoded once and written in turn (each file is still read and decoded by predict)."""
    listing = os.path.join(folder, "files.txt")
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(256):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    paths = [os.path.join(folder, f"{i // 1000:04d}", f"{i:06d}.png") for i in range(n)]
    if not (os.path.exists(listing) and all(os.path.exists(p) for p in paths[-10:])):
        for i, p in enumerate(paths):
            if i % 1000 == 0:
                os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(blobs[i % 256])
        with open(listing, "w") as f:
            f.write("\n".join(paths) + "\n")
    return listing, sum(len(blobs[i % 256]) for i in range(n))


def steps(a, out: str) -> list[tuple[str, list[str], str]]:
    runs = os.path.join(out, "runs")
    hym, c10 = os.path.join(DATA, "hymenoptera"), os.path.join(DATA, "cifar10-jpg")
    common = ["--out", runs]
    lite = ["--data", hym, "--model", "efficientnet_lite0", "--pretrained"]
    return [
        (
            "digits",
            imgclf(
                "train",
                "--data",
                "digits",
                "--model",
                "smallcnn",
                "--augment",
                "none",
                "--epochs",
                "10",
                "--name",
                "digits",
                *common,
            ),
            "",
        ),
        (
            "ants-frozen",
            imgclf("train", *lite, "--freeze", "backbone", "--epochs", "10", "--name", "ants", *common),
            "",
        ),
        (
            "ants-full",
            imgclf(
                "train",
                *lite,
                "--freeze",
                "none",
                "--epochs",
                "1",
                "--batch-size",
                str(a.lite0_batch),
                "--name",
                "ants-full",
                *common,
            ),
            "",
        ),
        (
            "fast",
            imgclf(
                "train",
                "--data",
                c10,
                "--recipe",
                "fast",
                "--time-budget",
                str(a.fast_minutes),
                "--name",
                "fast",
                *common,
            ),
            "",
        ),
        (
            "evaluate-ants",
            imgclf("evaluate", f"{runs}/ants/best.pt", "--split", "val", "--out", f"{out}/eval-ants"),
            "",
        ),
        (
            "evaluate-fast",
            imgclf("evaluate", f"{runs}/fast/best.pt", "--split", "test", "--out", f"{out}/eval-fast"),
            "",
        ),
        (
            "predict",
            imgclf("predict", f"{runs}/digits/best.pt", "--files-from", "FILES", "--output", f"{out}/preds.csv"),
            "",
        ),
        (
            "export",
            imgclf("export", f"{runs}/ants/best.pt", "--format", "onnx-int8", "--out", f"{out}/ants.int8.onnx"),
            "",
        ),
        (
            "serve",
            [
                PY,
                os.path.join(ROOT, "benchmarks", "serve_load.py"),
                a.serve_model or f"{out}/ants.int8.onnx",
                "--concurrency",
                "32",
                "--requests",
                str(a.requests),
                "--skip-offline",
                "--json",
                f"{out}/serve.json",
            ],
            "",
        ),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/imgclf-memory")
    ap.add_argument("--only", default="", help="comma-separated step names (default: all)")
    ap.add_argument("--lite0-batch", type=int, default=128)
    ap.add_argument("--fast-minutes", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--serve-model", help="what serve serves (default: the export step's ants.int8.onnx)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    print(subprocess.run(imgclf("env"), capture_output=True, text=True).stdout.splitlines()[0], flush=True)
    only = {s for s in a.only.split(",") if s}
    results_file = os.path.join(a.out, "memory.json")
    results = json.load(open(results_file)) if os.path.exists(results_file) else {}
    for name, cmd, _ in steps(a, a.out):
        if only and name not in only:
            continue
        if "FILES" in cmd:
            t = time.perf_counter()
            listing, size = make_files(os.path.join(a.out, "files"), a.files)
            print(f"{a.files} files, {size / 1e6:.0f} MB of PNG, made in {time.perf_counter() - t:.0f} s", flush=True)
            cmd = [listing if c == "FILES" else c for c in cmd]
        log = open(os.path.join(a.out, f"{name}.log"), "w")
        r = measure(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        r["command"] = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:])
        results[name] = r
        with open(results_file, "w") as f:
            json.dump(results, f, indent=1)
        big = r["largest_process_hwm"]
        print(
            f"{name:<14} rc {r['rc']}  {r['seconds']:>6.0f} s  tree RSS {r['tree_rss_peak'] / 2**30:5.2f} GiB  "
            f"tree PSS {r['tree_pss_peak'] / 2**30:5.2f} GiB  largest process "
            f"{'-' if big is None else f'{big / 2**30:5.2f} GiB'}  processes {r['processes_max']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
