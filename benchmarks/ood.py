"""Out-of-distribution scores measured by `imgclf evaluate --ood-data` (issue 25, checks 1 and 2).

1. Open-set CIFAR-10: a model trained on 6 CIFAR-10 classes (--known, default the first six in sorted order), the
   test images of the other 4 as the unknowns, its 6 classes' test images as the known ones.
2. Pretrained fine-tune: the hymenoptera EfficientNet-Lite0 model, its val images as the known ones, CIFAR-10 test
   images (32 px, upscaled by the model's own preprocessing to its input size) as the unknowns.

For each: AUROC and FPR at 95% TPR of msp, energy and knn (the scores the model gives: knn needs the bank a
checkpoint stores), and at the model's stored thresholds the fraction of unknown images rejected and of known
images wrongly rejected. Definitions (as in eval.json's "ood" block): AUROC with the unknown images as the positive
class; FPR at 95% TPR = the fraction of unknown images accepted by the threshold that accepts 95% of the known
ones.

    .venv/bin/python benchmarks/ood.py --prepare [--out /tmp/ood]
        writes OUT/cifar6/{train,test}/CLASS (links to the class folders), OUT/cifar4-unknown/ (links to the other
        classes' test images) and OUT/cifar10-unknown/ (a seeded sample of all test images, for check 2), and
        prints the training command for check 1
    .venv/bin/python benchmarks/ood.py --cifar6 CKPT --hymenoptera CKPT [--calibrate] [--out /tmp/ood]
        runs check 1 and/or check 2 (either checkpoint may be left out) and prints the tables; OUT/ood.json holds
        them; each evaluation folder (OUT/eval-cifar6, OUT/eval-hymenoptera) has eval.json and report.html

--calibrate runs `imgclf calibrate` on each checkpoint first (it fits the thresholds and the bank where the
checkpoint has none; the checkpoint is rewritten: pass a copy). No training is run here: train the 6-class
model with the command --prepare prints (the fast recipe; state the budget with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IMGCLF = [sys.executable, "-m", "imgclf"]
ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg"
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
SCORES = ("msp", "energy", "knn")


def cifar_classes(cifar: Path) -> list[str]:
    classes = sorted(p.name for p in (cifar / "test").iterdir() if p.is_dir())
    if len(classes) != 10:
        raise SystemExit(f"{cifar}/test should hold CIFAR-10's 10 class folders, found {len(classes)}")
    return classes


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_symlink():
        dst.symlink_to(src.resolve())


def prepare(cifar: Path, out: Path, known: list[str], sample: int, seed: int = 0) -> dict:
    """The folders of both checks, made of links (no image is copied): the 6-class training data (class folders
    linked: the data loader follows them), the unknown images of check 1 (every test image of the other classes,
    a link each: `--ood-data` walks files, not links to folders) and a seeded sample of `sample` CIFAR-10 test
    images, as many per class, for check 2."""
    classes = cifar_classes(cifar)
    bad = [c for c in known if c not in classes]
    if bad or len(set(known)) != 6:
        raise SystemExit(f"--known: name 6 CIFAR-10 classes of {', '.join(classes)} (got {', '.join(known)})")
    for split in ("train", "test"):
        for c in known:
            link(cifar / split / c, out / "cifar6" / split / c)
    for c in (c for c in classes if c not in known):
        for f in sorted((cifar / "test" / c).iterdir()):
            link(f, out / "cifar4-unknown" / c / f.name)
    rng = np.random.default_rng(seed)
    for c in classes:
        files = sorted((cifar / "test" / c).iterdir())
        for i in sorted(rng.choice(len(files), size=min(len(files), sample // len(classes)), replace=False)):
            link(files[i], out / "cifar10-unknown" / c / files[i].name)
    return {
        "data": out / "cifar6",
        "unknown": out / "cifar4-unknown",
        "hymenoptera_unknown": out / "cifar10-unknown",
        "known": known,
        "unknown_classes": [c for c in classes if c not in known],
    }


def calibrate(weights: str) -> None:
    subprocess.run([*IMGCLF, "calibrate", weights, "-q"], check=True)


def evaluate(weights: str, data: Path, split: str, unknown: Path, out: Path) -> tuple[dict, float]:
    """eval.json of `imgclf evaluate WEIGHTS --data DATA --split SPLIT --ood-data UNKNOWN`, and its seconds."""
    t = time.perf_counter()
    cmd = [*IMGCLF, "evaluate", weights, "--data", str(data), "--split", split, "--ood-data", str(unknown)]
    subprocess.run([*cmd, "--out", str(out), "-q"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    return json.loads((out / "eval.json").read_text()), seconds


def pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def table(name: str, m: dict, seconds: float) -> str:
    o = m["ood"]
    lines = [
        f"{name}: accuracy {m.get('accuracy', float('nan')):.4f} on {o['known_images']} known images ({o['split']}); "
        f"{o['unknown_images']} unknown images; evaluate took {seconds:.0f} s",
        "| score | AUROC | FPR at 95% TPR | stored threshold | unknown rejected | known wrongly rejected |",
        "|---|---|---|---|---|---|",
    ]
    for s in SCORES:
        r = o["scores"].get(s)
        if r is None:
            lines.append(f"| {s} | (not given by this model) | | | | |")
            continue
        t = "-" if r["threshold"] is None else f"{r['threshold']:.4g}"
        lines.append(
            f"| {s} | {r['auroc']:.4f} | {r['fpr_at_95_tpr']:.4f} | {t} | {pct(r['rejected_unknown'])} | "
            f"{pct(r['rejected_known'])} |"
        )
    if "note" in o:
        lines.append(f"({o['note']})")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/ood"), help="folders, evaluations and ood.json [/tmp/ood]")
    p.add_argument("--cifar", type=Path, default=CIFAR, help="CIFAR-10 as class folders (train/, test/)")
    p.add_argument("--hymenoptera-data", type=Path, default=HYMENOPTERA, help="hymenoptera (train/, val/)")
    p.add_argument("--known", default=None, help="check 1's 6 known classes, comma-separated [the first 6 sorted]")
    p.add_argument("--sample", type=int, default=2000, help="check 2's CIFAR-10 test images (unknowns) [2000]")
    p.add_argument("--prepare", action="store_true", help="make the folders, print the training command, stop")
    p.add_argument("--cifar6", help="check 1: the 6-class CIFAR-10 checkpoint (trained on OUT/cifar6)")
    p.add_argument("--hymenoptera", help="check 2: the hymenoptera EfficientNet-Lite0 checkpoint")
    p.add_argument("--calibrate", action="store_true", help="imgclf calibrate each checkpoint first (rewrites it)")
    a = p.parse_args(argv)
    if a.sample < 10:
        p.error("--sample must be at least 10 (one image per CIFAR-10 class)")
    if not a.prepare and not (a.cifar6 or a.hymenoptera):
        p.error("give --prepare, or --cifar6 and/or --hymenoptera checkpoints to measure")
    for flag, path in (("--cifar6", a.cifar6), ("--hymenoptera", a.hymenoptera)):
        if path and not os.path.isfile(path):
            p.error(f"{flag} '{path}': no such checkpoint")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    known = a.known.split(",") if a.known else cifar_classes(a.cifar)[:6]
    made = prepare(a.cifar, a.out, known, a.sample)
    if a.prepare:
        print(f"known {', '.join(made['known'])}; unknown {', '.join(made['unknown_classes'])}")
        print(f"check 1's model: imgclf train --data {made['data']} --recipe fast --epochs E")
        return 0
    results = {"known_classes": made["known"], "unknown_classes": made["unknown_classes"]}
    checks = [
        ("cifar6", a.cifar6, made["data"], "test", made["unknown"]),
        ("hymenoptera", a.hymenoptera, a.hymenoptera_data, "val", made["hymenoptera_unknown"]),
    ]
    for name, weights, data, split, unknown in checks:
        if not weights:
            continue
        if a.calibrate:
            calibrate(weights)
        m, seconds = evaluate(weights, data, split, unknown, a.out / f"eval-{name}")
        print(table(name, m, seconds) + "\n", flush=True)
        results[name] = {"weights": weights, "seconds": seconds, "accuracy": m.get("accuracy"), "ood": m["ood"]}
    (a.out / "ood.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {a.out / 'ood.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
