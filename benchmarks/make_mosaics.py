"""Multi-label benchmark data from CIFAR-10 JPEGs (issue 24): 2x2 mosaics of 32 px tiles (64 px images).

Each mosaic holds k distinct classes, k drawn uniformly from 1..4; its four tiles are filled by those k classes,
each at least once (the 4 - k other tiles by classes drawn uniformly from the same k, so a class may fill more than
one tile), at shuffled positions. Its labels are the k classes. Train and val mosaics are made from CIFAR-10's
training JPEGs, test mosaics from its test JPEGs only; a source image is used at most once in train and val
together (so no tile is shared between them) and at most once in test. Written as PNG (lossless: a tile cut from a
mosaic is exactly the decoded source JPEG) under --out:

    mosaics.csv  path,labels,split            (labels `a|b` in class order; `imgclf train mosaics.csv`)
    tiles.csv    path,label,split,mosaic,position
                 (path: the source JPEG, absolute; mosaic: its mosaic's path in mosaics.csv; position 0..3 =
                 top-left, top-right, bottom-left, bottom-right; a single-label manifest of the same tiles:
                 `imgclf train tiles.csv` trains the per-tile reference model, applied per tile to the mosaics)
    {train,val,test}/NNNNN.png

Deterministic: the same root, seed and sizes give the same files byte for byte.

    .venv/bin/python benchmarks/make_mosaics.py [--root ../shared/data/cifar10-jpg] [--out /tmp/mosaics]
        [--train 10000] [--val 1000] [--test 2000] [--seed 0]

The defaults use 44,000 of the 50,000 training JPEGs and 8,000 of the 10,000 test JPEGs (four tiles a mosaic).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
GRID = 2  # 2 x 2 tiles
TILES = GRID * GRID
MAX_TRIES = 1000


def listing(root: Path, split: str) -> dict[str, list[Path]]:
    """The source JPEGs of one CIFAR split by class (classes and files sorted)."""
    base = root / split
    if not base.is_dir():
        sys.exit(f"make_mosaics: no folder '{base}': give --root, the folder holding train/CLASS/*.jpg and test/")
    return {c.name: sorted(c.glob("*.jpg")) for c in sorted(p for p in base.iterdir() if p.is_dir())}


def draw_mosaic(rng: np.random.Generator, left: dict[str, int], classes: list[str]) -> list[str] | None:
    """The classes of one mosaic's four tiles (position order): k ~ U{1..4} distinct classes, each at least once,
    the rest drawn from those k. None when the sources left cannot give them (the caller draws again)."""
    k = int(rng.integers(1, TILES + 1))
    chosen = [classes[i] for i in rng.choice(len(classes), size=k, replace=False)]
    tiles = chosen + [chosen[i] for i in rng.integers(0, k, size=TILES - k)]
    tiles = [tiles[i] for i in rng.permutation(TILES)]
    if any(tiles.count(c) > left[c] for c in chosen):
        return None
    return tiles


def plan(pools: dict[str, list[Path]], sizes: dict[str, int], rng: np.random.Generator) -> list[dict]:
    """One record per mosaic (split, index, tile classes, tile sources), the splits in the order given; each
    split's sources taken without replacement from `pools` (shuffled once), so no source is used twice."""
    classes = sorted(pools)
    order = {c: [pools[c][i] for i in rng.permutation(len(pools[c]))] for c in classes}
    left = {c: len(order[c]) for c in classes}
    need = TILES * sum(sizes.values())
    if need > sum(left.values()):
        sys.exit(
            f"make_mosaics: {sum(sizes.values())} mosaics need {need} tiles but there are only {sum(left.values())} "
            "source images: ask for fewer mosaics"
        )
    out = []
    for split, n in sizes.items():
        for i in range(n):
            for _ in range(MAX_TRIES):
                tiles = draw_mosaic(rng, left, classes)
                if tiles is not None:
                    break
            else:
                sys.exit(f"make_mosaics: the source images ran out at {split} mosaic {i}: ask for fewer mosaics")
            sources = []
            for c in tiles:
                left[c] -= 1
                sources.append(order[c][left[c]])
            out.append({"split": split, "index": i, "tiles": tiles, "sources": sources})
    return out


def compose(sources: list[Path], tile: int) -> Image.Image:
    """The mosaic of four source images (position order: row by row)."""
    canvas = Image.new("RGB", (GRID * tile, GRID * tile))
    for pos, src in enumerate(sources):
        with Image.open(src) as im:
            im = im.convert("RGB")
            if im.size != (tile, tile):
                sys.exit(f"make_mosaics: '{src}' is {im.size[0]}x{im.size[1]}, not {tile}x{tile}: give --tile")
            canvas.paste(im, ((pos % GRID) * tile, (pos // GRID) * tile))
    return canvas


def write(records: list[dict], out: Path, classes: list[str], tile: int) -> None:
    """The mosaics as PNG files and the two manifests."""
    out.mkdir(parents=True, exist_ok=True)
    mosaics, tiles = [], []
    for r in records:
        rel = f"{r['split']}/{r['index']:05d}.png"
        (out / r["split"]).mkdir(exist_ok=True)
        compose(r["sources"], tile).save(out / rel, format="PNG")
        labels = [c for c in classes if c in r["tiles"]]
        mosaics.append((rel, "|".join(labels), r["split"]))
        for pos, (c, src) in enumerate(zip(r["tiles"], r["sources"])):
            tiles.append((str(src.resolve()), c, r["split"], rel, pos))
    for name, header, rows in (
        ("mosaics.csv", ("path", "labels", "split"), mosaics),
        ("tiles.csv", ("path", "label", "split", "mosaic", "position"), tiles),
    ):
        tmp = out / (name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        tmp.replace(out / name)


def make(root: Path, out: Path, sizes: dict[str, int], seed: int = 0, tile: int = 32) -> list[dict]:
    """Plans and writes the mosaics: train and val from root/train, test from root/test."""
    rng = np.random.default_rng(seed)
    train_pool, test_pool = listing(root, "train"), listing(root, "test")
    if sorted(train_pool) != sorted(test_pool):
        sys.exit(f"make_mosaics: '{root}/train' and '{root}/test' have different classes")
    records = plan(train_pool, {"train": sizes["train"], "val": sizes["val"]}, rng)
    records += plan(test_pool, {"test": sizes["test"]}, rng)
    write(records, out, sorted(train_pool), tile)
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=SHARED / "data" / "cifar10-jpg")
    ap.add_argument("--out", type=Path, default=Path("/tmp/mosaics"))
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile", type=int, default=32, help="the source images' side in pixels")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    records = make(a.root, a.out, {"train": a.train, "val": a.val, "test": a.test}, a.seed, a.tile)
    ks = np.bincount([len(set(r["tiles"])) for r in records], minlength=TILES + 1)[1:]
    print(
        f"{len(records)} mosaics ({a.train} train, {a.val} val, {a.test} test) in {a.out}; "
        f"distinct classes 1..4: {ks.tolist()}; {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
