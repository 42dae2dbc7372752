"""Planted label noise on CIFAR-10 JPEGs (issue 23, checks 1 and 2).

1. A seeded 10,000-image subset of CIFAR-10's training JPEGs as CSV manifests (absolute paths to the shared
   files; nothing copied); 5% of its labels flipped, once uniformly at random to another class and once to a
   confusable class (cat<->dog, automobile<->truck, deer<->horse, airplane<->ship, bird<->frog);
   `check --deep` (studies/audit/deep.py, the Python API behind `imgclf check CSV --deep --fixes F`) on each;
   precision and recall of its label-issue list against the planted flips, and the seconds it took (the second
   run reads the features the first cached: the files are the same, only labels differ).
2. `--train`: does cleaning pay? `imgclf train --recipe fast` on the noisy (uniform) subset, on the same subset
   with the suggested fixes applied (`--apply-fixes`, where `imgclf train` has it) and on the clean subset, for
   `--seeds` seeds; test accuracy of each on CIFAR-10's 10,000 test JPEGs (never used to choose anything).

    .venv/bin/python benchmarks/label_noise.py [--root ../shared/data/cifar10-jpg] [--n 10000] [--rate 0.05]
        [--model efficientnet_lite0 | --audit-with fast] [--out /tmp/label_noise] [--train --seeds 3]

Times need the machine to oneself; accuracies do not.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
IMGCLF = [sys.executable, "-m", "imgclf"]
CONFUSABLE = [("cat", "dog"), ("automobile", "truck"), ("deer", "horse"), ("airplane", "ship"), ("bird", "frog")]


def listing(root: Path, split: str) -> tuple[list[str], list[str]]:
    paths, labels = [], []
    for c in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
        for f in sorted((root / split / c).iterdir()):
            paths.append(str(f.resolve()))
            labels.append(c)
    return paths, labels


def flip(labels: list[str], rate: float, mode: str, seed: int) -> tuple[list[str], set[int]]:
    """The labels with round(rate * N) of them changed (uniformly to another class, or to the confusable
    partner); the indices changed."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    partner = {a: b for a, b in CONFUSABLE} | {b: a for a, b in CONFUSABLE}
    pool = np.arange(len(labels)) if mode == "uniform" else np.flatnonzero([c in partner for c in labels])
    idx = rng.choice(pool, size=round(rate * len(labels)), replace=False)
    out = list(labels)
    for i in idx:
        if mode == "uniform":
            out[i] = rng.choice([c for c in classes if c != labels[i]])
        else:
            out[i] = partner[labels[i]]
    return out, set(int(i) for i in idx)


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)


def run_check(csv_path: Path, out: Path, model: str, planted: set[str]) -> dict:
    from imgclf.studies.audit.deep import deep_check
    from imgclf.studies.audit.labels import LIKELY

    t = time.perf_counter()
    res = deep_check(str(csv_path), model=model, out=str(out / "check"), fixes=str(out / "fixes.csv"))
    seconds = time.perf_counter() - t
    suspects = [f for f in res.report.warnings if f.kind == "label"]  # worst first
    ranked = [
        f.paths[0] if os.path.isabs(f.paths[0]) else str((csv_path.parent / f.paths[0]).resolve()) for f in suspects
    ]
    flagged = set(ranked)
    likely = {p for f, p in zip(suspects, ranked) if f.wrong is not None and f.wrong >= LIKELY}
    tp, tp_likely = len(flagged & planted), len(likely & planted)
    deep = res.report.summary["deep"]
    return {
        "flagged": len(flagged),
        "planted": len(planted),
        "precision": round(tp / len(flagged), 4) if flagged else None,
        "recall": round(tp / len(planted), 4),
        "likely_wrong": len(likely),  # the relabels fixes.csv suggests: P(label wrong) >= LIKELY
        "likely_precision": round(tp_likely / len(likely), 4) if likely else None,
        "likely_recall": round(tp_likely / len(planted), 4),
        "noise_rate_estimated": deep["labels"].get("noise_rate"),
        "precision_at_recall_0.6": precision_at_recall(ranked, planted, 0.6),
        "seconds": round(seconds, 1),
        "cache": deep["cache"],
        "cv_accuracy": deep["labels"]["cv_accuracy"],
        "img_size": deep["img_size"],
    }


def precision_at_recall(ranked: list[str], planted: set[str], recall: float) -> float | None:
    """Precision of the list's head (worst first) that first reaches `recall` of the planted flips; None when
    the whole list does not."""
    hits = 0
    for k, p in enumerate(ranked, 1):
        hits += p in planted
        if hits >= recall * len(planted):
            return round(hits / k, 4)
    return None


def train_acc(csv_path: Path, out: Path, seed: int, extra: list[str]) -> float:
    name = f"{csv_path.stem}-s{seed}"
    cmd = [*IMGCLF, "train", "--data", str(csv_path), "--recipe", "fast", "--seed", str(seed)]
    subprocess.run([*cmd, "--out", str(out / "runs"), "--name", name, "-q", *extra], check=True)
    ev = subprocess.run(
        [*IMGCLF, "evaluate", str(out / "runs" / name / "best.pt"), "--split", "test", "--json", "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(ev.stdout)["accuracy"])


def trained(csv_path: Path, out: Path, seed: int) -> str:
    """`imgclf train --recipe fast` on the noisy manifest (it carves its own val): its best.pt, whose backbone
    `check --deep --model` then uses with a cross-validated head."""
    name = f"audit-{csv_path.stem}-s{seed}"
    best = out / "runs" / name / "best.pt"
    if not best.exists():
        t = time.perf_counter()
        cmd = [*IMGCLF, "train", "--data", str(csv_path), "--recipe", "fast", "--seed", str(seed), "-q"]
        subprocess.run([*cmd, "--out", str(out / "runs"), "--name", name], check=True)
        print(f"trained {best} in {time.perf_counter() - t:.0f} s", flush=True)
    return str(best)


def has_apply_fixes() -> bool:
    helptext = subprocess.run([*IMGCLF, "train", "--help"], capture_output=True, text=True).stdout
    return "--apply-fixes" in helptext


def check_two(out: Path, clean: list, noisy: list, test: list, fixes: Path, seeds: int, only: str) -> dict:
    """The fast recipe on noisy, fixed and clean training rows (those in `only`); mean test accuracy over
    `seeds`."""
    arms = {"noisy": (noisy, [])}
    if has_apply_fixes():
        arms["fixed"] = (noisy, ["--apply-fixes", str(fixes)])
    else:
        print("imgclf train has no --apply-fixes in this build: the 'fixed' arm is left out", flush=True)
    arms["clean"] = (clean, [])
    results = {}
    for arm, (rows, extra) in arms.items():
        if arm not in only.split(","):
            continue
        path = out / f"train-{arm}.csv"
        write_csv(path, rows + test)
        accs = [train_acc(path, out, s, extra) for s in range(seeds)]
        results[arm] = {"accuracies": accs, "mean": round(float(np.mean(accs)), 4)}
        print(f"check 2 {arm}: test accuracy {results[arm]}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(SHARED / "data" / "cifar10-jpg"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument(
        "--audit-with",
        choices=("model", "fast"),
        default="model",
        help="fast: train the fast recipe on each noisy subset first and audit with its checkpoint (--model RUN)",
    )
    ap.add_argument("--out", default="/tmp/label_noise")
    ap.add_argument("--modes", default="uniform,confusable")
    ap.add_argument("--train", action="store_true", help="check 2: the fast recipe on noisy, fixed, clean")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default="noisy,fixed,clean", help="check 2: which trainings to run")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root, out = Path(a.root), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    paths, labels = listing(root, "train")
    keep = np.sort(np.random.default_rng(a.seed).choice(len(paths), size=a.n, replace=False))
    paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    clean = [(p, c, "train") for p, c in zip(paths, labels)]
    results = {}
    for mode in a.modes.split(","):
        noisy_labels, flipped = flip(labels, a.rate, mode, a.seed + 1)
        noisy = [(p, c, "train") for p, c in zip(paths, noisy_labels)]
        folder = out / mode
        folder.mkdir(exist_ok=True)
        write_csv(folder / f"noisy-{mode}.csv", noisy)
        model = a.model
        if a.audit_with == "fast":  # the workflow of train, then audit with what was trained
            model = trained(folder / f"noisy-{mode}.csv", folder, a.seed)
        results[mode] = run_check(folder / f"noisy-{mode}.csv", folder, model, {paths[i] for i in flipped})
        print(f"check 1 {mode}: {json.dumps(results[mode])}", flush=True)
        if a.train and mode == "uniform":
            tpaths, tlabels = listing(root, "test")
            test = [(p, c, "test") for p, c in zip(tpaths, tlabels)]
            results["check2"] = check_two(out, clean, noisy, test, folder / "fixes.csv", a.seeds, a.arms)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
