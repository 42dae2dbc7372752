"""Export formats against eager PyTorch: ResNet-18 at 224 px, batch 32, every format, measured in one run.

Steps (all through the `imgclf` command line):
1. a ResNet-18 224 px checkpoint: `--weights` if given, else a short fine-tune on hymenoptera (1 epoch from
   scratch: this machine has no offline ImageNet weights for ResNet-18; speed does not depend on them);
2. `imgclf export` to torchscript, pt2, onnx, onnx-int8 and dynamic-int8 (each verified against eager
   PyTorch on real images before it is written);
3. `imgclf bench` of the checkpoint (eager fp32 NCHW = the seed's baseline, fp32 channels_last, bf16 autocast
   + channels_last) and every export, on the same real images, in interleaved rounds;
4. the table, and the ratios the export issue sets as targets: onnx-int8 against eager fp32 (>= 6x) and
   against the best eager setting.

    .venv/bin/python benchmarks/export_formats.py [--weights runs/r18/best.pt] [--data ../shared/data/hymenoptera]
        [--batch-size 32] [--iters 12] [--out /tmp/export-bench]

Run it on an otherwise idle machine if you can: every setting is timed by wall clock (the rounds spread a
varying load over all of them alike, but a loaded machine lowers every number).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
IMGCLF = [sys.executable, "-m", "imgclf"]


def run(args: list[str], capture: bool = False) -> str:
    print("$ imgclf " + " ".join(args), flush=True)
    res = subprocess.run(IMGCLF + args, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return res.stdout or ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="a ResNet-18 224 px checkpoint (default: train one briefly on --data)")
    ap.add_argument("--data", default=str(SHARED / "data" / "hymenoptera"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=12, help="timed iterations per setting")
    ap.add_argument("--out", help="folder for the checkpoint and exports (default: a temporary folder)")
    a = ap.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)

    out = Path(a.out or tempfile.mkdtemp(prefix="imgclf-export-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    weights = a.weights
    if not weights:
        run(
            [
                "train",
                "--data",
                a.data,
                "--model",
                "resnet18",
                "--img-size",
                "224",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--name",
                "r18",
                "-q",
            ]
        )
        weights = str(out / "r18" / "best.pt")
    from imgclf.core.formats import FORMATS  # every format imgclf exports, with its default suffix

    exports = []
    for fmt, entry in FORMATS.items():
        path = out / f"r18{entry.suffix}"
        report = json.loads(run(["export", weights, "--format", fmt, "--out", str(path), "--json", "-q"], capture=True))
        v = report["verification"]
        print(
            f"  {fmt}: max |logit diff| {v['max_abs_diff']:.3g}, top-1 agreement {v['top1_agreement']:.1%} "
            f"on {v['data']}",
            flush=True,
        )
        exports.append(str(path))

    rows = json.loads(
        run(
            [
                "bench",
                weights,
                *exports,
                "--batch-sizes",
                str(a.batch_size),
                "--data",
                a.data,
                "--iters",
                str(a.iters),
                "--rounds",
                "4",
                "--max-seconds",
                "120",
                "--json",
                "-q",
            ],
            capture=True,
        )
    )
    print(f"\nResNet-18, 224 px, batch {a.batch_size}, {rows[0]['threads']} threads, {os.cpu_count()} CPUs")
    print(f"{'format':<15} {'p50 ms':>9} {'p90 ms':>9} {'images/s':>9} {'size MB':>8} {'accuracy':>9}")
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        print(
            f"{r['format']:<15} {r['latency_p50_ms']:9.1f} {r['latency_p90_ms']:9.1f} {r['images_per_s']:9.1f} "
            f"{r['size_mb']:8.1f} {acc:>9}"
        )
    ips = {r["format"]: r["images_per_s"] for r in rows}
    eager_best = max((k for k in ips if k.startswith("eager-")), key=ips.get)
    print(f"\nonnx-int8 / eager-fp32 (the seed's baseline): {ips['onnx-int8'] / ips['eager-fp32']:.2f}x (target >= 6x)")
    print(f"onnx-int8 / best eager ({eager_best}): {ips['onnx-int8'] / ips[eager_best]:.2f}x")
    if "eager-bf16-cl" in ips:
        print(f"onnx-int8 / eager-bf16-cl: {ips['onnx-int8'] / ips['eager-bf16-cl']:.2f}x")
    (out / "bench.json").write_text(json.dumps(rows, indent=2))
    print(f"rows: {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
