"""JPEG decoding: libjpeg-turbo through simplejpeg (data/jpeg.py) against Pillow alone, single-threaded.

    .venv/bin/python benchmarks/decode.py [--rounds 7] [--accuracy WEIGHTS]

Three sets, each decoded to the model's input the way every path decodes a file (`data.images.load_image`: the
JPEG at the reduced scale that still covers `--resize`, upright, RGB, the shorter side resized to `--resize` px):
(a) hymenoptera's photos (train and val, ~500 x 375), (b) `--n-cifar` of CIFAR-10's 32 x 32 JPEGs (enlarged to
`--resize`), (c) `--n-big` 12 MP JPEGs (4000 x 3000, quality 90) made once from hymenoptera's photos, enlarged,
into `--big-dir`. The two decoders: "pillow" (simplejpeg switched off: Pillow's decoder with its `draft`, as
before simplejpeg) and "turbo" (the default). The rounds are interleaved (pillow, turbo, then turbo, pillow,
...) so that both see the same machine; printed per set: the median images/s of each over the rounds and their
ratio, the median CPU time per image (this process's, which a busy machine distorts less than the wall
clock), and the largest and mean absolute pixel difference between the two decoders' results (expected 0:
libjpeg-turbo at the same scale, DCT and upsampling as Pillow). One thread: the process runs no other work, and
PIL's and libjpeg-turbo's decoders are single-threaded.

`--accuracy WEIGHTS`: the val accuracy of WEIGHTS (a checkpoint or an export of a hymenoptera model) with each
decoder (Predictor on `--val`), and how many predictions agree.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
SHARED = os.path.join(ROOT, "..", "shared", "data")

from imgclf.data import jpeg  # noqa: E402 - after the path of this checkout's src/
from imgclf.data.images import load_image  # noqa: E402

DECODERS = ("pillow", "turbo")


@contextlib.contextmanager
def decoder(name: str):
    """Every decode in the block by `name`: "pillow" switches simplejpeg off (the module's fallback), "turbo" is
    the default path."""
    saved = jpeg.simplejpeg
    if name == "pillow":
        jpeg.simplejpeg = None
    elif saved is None:
        sys.exit("simplejpeg is not installed: pip install simplejpeg")
    try:
        yield
    finally:
        jpeg.simplejpeg = saved


def jpegs(folder: str, limit: int | None = None) -> list[str]:
    files = sorted(
        p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if p.lower().endswith((".jpg", ".jpeg"))
    )
    return files[:limit] if limit else files


def make_big(photos: list[str], folder: str, n: int, size=(4000, 3000)) -> list[str]:
    """`n` 12 MP JPEGs enlarged from `photos` (made once; kept in `folder` for the next run)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    out = []
    for i, p in enumerate(photos[:n]):
        dst = os.path.join(folder, f"big-{i:03d}-{os.path.basename(p)}")
        if not os.path.exists(dst):
            with Image.open(p) as im:
                im.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(dst + ".tmp", "JPEG", quality=90)
            os.replace(dst + ".tmp", dst)
        out.append(dst)
    return out


def decode_all(files: list[str], resize: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to decode every file of `files` to the model's resize."""
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        load_image(f, resize=resize)
    return time.perf_counter() - t0, time.process_time() - c0


def compare(name: str, files: list[str], resize: int, rounds: int) -> dict:
    for d in DECODERS:  # warm: the files in the page cache, the libraries loaded
        with decoder(d):
            decode_all(files[:20], resize)
    rates, cpu = {d: [] for d in DECODERS}, {d: [] for d in DECODERS}
    for r in range(rounds):
        for d in DECODERS if r % 2 == 0 else reversed(DECODERS):
            with decoder(d):
                wall, busy = decode_all(files, resize)
            rates[d].append(len(files) / wall)
            cpu[d].append(1000 * busy / len(files))
    med = {d: statistics.median(v) for d, v in rates.items()}
    ms = {d: statistics.median(v) for d, v in cpu.items()}
    worst, means = 0, []
    for f in files[:200]:
        with decoder("pillow"):
            a = np.asarray(load_image(f, resize=resize), dtype=np.int16)
        with decoder("turbo"):
            b = np.asarray(load_image(f, resize=resize), dtype=np.int16)
        if a.shape != b.shape:
            sys.exit(f"{f}: the decoders give different sizes, {a.shape} and {b.shape}")
        worst, means = max(worst, int(np.abs(a - b).max())), [*means, float(np.abs(a - b).mean())]
    print(
        f"{name:<12} {len(files):>6} images: pillow {med['pillow']:8.1f} img/s, turbo {med['turbo']:8.1f} img/s, "
        f"turbo / pillow {med['turbo'] / med['pillow']:.2f}; CPU per image: pillow {ms['pillow']:.3f} ms, "
        f"turbo {ms['turbo']:.3f} ms; pixels (first {min(200, len(files))}): "
        f"max |diff| {worst}, mean {statistics.fmean(means):.4f}",
        flush=True,
    )
    return {"images": len(files), "median_images_per_s": med, "cpu_ms": ms, "rounds": rates, "max_diff": worst}


def accuracy(weights: str, val: str) -> None:
    from imgclf.infer.predict import Predictor

    files = jpegs(val)
    truth = [os.path.basename(os.path.dirname(f)) for f in files]
    labels = {}
    for d in DECODERS:
        with decoder(d):
            pred = Predictor(weights, device="cpu", batch_size=32, workers=1)
            labels[d] = [r.get("label") for r in pred.predict(files, top_k=1)]
        acc = sum(a == b for a, b in zip(labels[d], truth)) / len(files)
        print(f"val accuracy with {d:<6}: {acc:.4f} ({len(files)} images)")
    same = sum(a == b for a, b in zip(*labels.values()))
    print(f"predictions that agree: {same} of {len(files)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hymenoptera", default=os.path.join(SHARED, "hymenoptera"))
    p.add_argument("--cifar", default=os.path.join(SHARED, "cifar10-jpg", "test"))
    p.add_argument("--n-cifar", type=int, default=3000, help="CIFAR-10 JPEGs decoded [3000]")
    p.add_argument("--n-big", type=int, default=24, help="12 MP JPEGs made and decoded [24]")
    p.add_argument("--big-dir", default=os.path.expanduser("~/.cache/imgclf/bench-decode-12mp"))
    p.add_argument("--resize", type=int, default=256, help="the model's resize (256 for a 224 crop) [256]")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per decoder [7]")
    p.add_argument("--accuracy", metavar="WEIGHTS", help="also the val accuracy of WEIGHTS with each decoder")
    p.add_argument("--val", help="val folder for --accuracy [HYMENOPTERA/val]")
    a = p.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    print(f"simplejpeg {getattr(jpeg.simplejpeg, '__version__', 'absent')}; resize {a.resize}; {a.rounds} rounds")
    photos = jpegs(a.hymenoptera)
    sets = [
        ("hymenoptera", photos),
        ("cifar10", jpegs(a.cifar, a.n_cifar)),
        ("12MP", make_big(photos, a.big_dir, a.n_big)),
    ]
    for name, files in sets:
        if not files:
            print(f"{name}: no JPEGs found, skipped")
            continue
        compare(name, files, a.resize, a.rounds)
    if a.accuracy:
        accuracy(a.accuracy, a.val or os.path.join(a.hymenoptera, "val"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
