"""Group-aware splits (issue 23, check 4): does a split by class only flatter a model when each object has several
near-identical shots, and does `--group-by` give an honest validation score?

1. A folder of "objects": OBJECTS CIFAR-10 training photos per class, each photographed SHOTS times (a small random
   crop of 26-30 px resized back to 32, a random horizontal flip, brightness x0.85-1.15, JPEG quality 90), named
   `CLASS/objNNNNN_sK.jpg`, so that the pattern `(obj\\d+)_s` names the object. A CSV manifest lists them as
   `train` and the CIFAR-10 test images (10,000, never seen in any form) as `test`: imgclf carves validation from
   train.
2. The same model trained twice on it, seed for seed: with imgclf's carved split stratified by class (today's
   default) and with `--group-by '(obj\\d+)_s'`.
3. For each: how many objects the carved split puts on both sides (`imgclf check split.csv --group-by`, the
   group-leak errors), the best validation accuracy (results.json) and the accuracy on the test set
   (`imgclf evaluate --split test`).

    .venv/bin/python benchmarks/groups.py [--root ../shared/data/cifar10-jpg] [--objects 100] [--shots 4]
        [--model smallcnn] [--epochs 8] [--seed 0] [--out /tmp/imgclf-groups]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageEnhance

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
PATTERN = r"(obj\d+)_s"
IMGCLF = [str(Path(sys.executable).parent / "imgclf")]


def shot(im: Image.Image, rng: random.Random) -> Image.Image:
    """One near-identical photo of the same object: a small crop and shift, a flip, a brightness change."""
    side = rng.randint(26, 30)
    x, y = rng.randint(0, 32 - side), rng.randint(0, 32 - side)
    out = im.crop((x, y, x + side, y + side)).resize((32, 32), Image.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.85, 1.15))


def build(root: Path, out: Path, objects: int, shots: int, seed: int) -> Path:
    """The objects' folder and the manifest (train: the shots; test: CIFAR-10's test images)."""
    rng = random.Random(seed)
    rows = []
    for c, cls in enumerate(sorted(p.name for p in (root / "train").iterdir() if p.is_dir())):
        files = sorted((root / "train" / cls).iterdir())
        (out / "objects" / cls).mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(rng.sample(files, objects)):
            with Image.open(f) as im:
                im = im.convert("RGB")
                for s in range(shots):
                    name = f"objects/{cls}/obj{c * objects + k:05d}_s{s}.jpg"  # one number per object
                    shot(im, rng).save(out / name, quality=90)
                    rows.append((name, cls, "train"))
        rows += [(str(f), cls, "test") for f in sorted((root / "test" / cls).iterdir())]
    manifest = out / "objects.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return manifest


def imgclf(*args: str, capture: bool = False) -> str:
    r = subprocess.run([*IMGCLF, *args], check=False, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        sys.exit(f"imgclf {' '.join(args)} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout if capture else ""


def one_run(manifest: Path, runs: Path, name: str, a, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    common = ["--model", a.model, "--epochs", str(a.epochs), "--seed", str(a.seed), "--workers", "2"]
    imgclf("train", "--data", str(manifest), *common, "--out", str(runs), "--name", name, "-q", *extra)
    run = runs / name
    results = json.loads((run / "results.json").read_text())
    # The carved split as a manifest: check's group-leak errors count the objects on both sides.
    report = json.loads(imgclf("check", str(run / "split.csv"), "--group-by", PATTERN, "--json", capture=True))
    leaks = [f for f in report["errors"] if f["kind"] == "group-leak"]
    ev = json.loads(imgclf("evaluate", str(run / "best.pt"), "--split", "test", "--json", capture=True))
    return {
        "run": name,
        "val_images": results["best"]["num_images"],
        "val_accuracy": results["best"]["accuracy"],
        "test_accuracy": ev["accuracy"],
        "objects_on_both_sides": len(leaks),
        "images_in_leaked_objects": sum(len(f["paths"]) for f in leaks),
        "groups_recorded": results.get("groups"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(SHARED / "data" / "cifar10-jpg"))
    p.add_argument("--objects", type=int, default=100, help="objects per class")
    p.add_argument("--shots", type=int, default=4, help="shots per object")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/imgclf-groups")
    a = p.parse_args()
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: pass another --out")
    env = subprocess.run([*IMGCLF, "env"], capture_output=True, text=True, check=False).stdout.strip()
    print(env, flush=True)
    manifest = build(Path(a.root), out, a.objects, a.shots, a.seed)
    rows = [
        one_run(manifest, out / "runs", "stratified", a, []),
        one_run(manifest, out / "runs", "grouped", a, ["--group-by", PATTERN]),
    ]
    print(json.dumps({"machine": env.splitlines()[0], "args": vars(a), "runs": rows}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
