"""What the training tools of issue 11 do to accuracy, on real data; each part prints what it ran and the numbers.

    balance   class balancing on a long-tailed CIFAR-10 (5,000 training images, the largest class 10x the
              smallest, an exponential profile; the test split unchanged): test macro-F1 and accuracy with
              --balance auto against --balance none, two seeds each (airnet_small, the fast recipe's
              optimisation, 30 epochs at batch 256)
    finetune  EfficientNet-Lite0 (ImageNet weights) on hymenoptera: `imgclf lr-find --freeze none`, then 10
              epochs at its suggestion with --freeze none, --freeze backbone and --freeze-epochs 2; val accuracy
    ema       CIFAR-10 JPEGs, --recipe fast --time-budget 5, with and without --ema: test accuracy (timed by the
              budget: run it on an otherwise idle machine)

    .venv/bin/python benchmarks/training_tools.py balance|finetune|ema [--data PATH] [--keep DIR]

Accuracy, not speed, is measured; only `ema` depends on the machine's speed (through the time budget).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
IMGCLF = [sys.executable, "-m", "imgclf"]


def run(args: list[str]) -> str:
    print("  $ imgclf " + " ".join(args), flush=True)
    return subprocess.run(IMGCLF + args, check=True, capture_output=True, text=True).stdout


def evaluate(ckpt: str, split: str, data: str | None = None) -> dict:
    extra = ["--data", data] if data else []
    return json.loads(run(["-q", "evaluate", ckpt, "--split", split, "--json", *extra]))


def long_tailed(cifar: Path, out: Path, total: int = 5000, ratio: float = 10.0, seed: int = 0) -> list[int]:
    """out/train/<class>/ (symlinks: n_c = n_max * ratio**(-c/9), c in sorted class order, summing to `total`)
    and out/test -> the whole test split. Returns the counts."""
    classes = sorted(p.name for p in (cifar / "train").iterdir())
    q = [ratio ** (-i / (len(classes) - 1)) for i in range(len(classes))]
    counts = [round(total * x / sum(q)) for x in q]
    rng = random.Random(seed)
    for c, n in zip(classes, counts):
        files = sorted((cifar / "train" / c).iterdir())
        (out / "train" / c).mkdir(parents=True)
        for f in rng.sample(files, n):
            (out / "train" / c / f.name).symlink_to(f)
    (out / "test").symlink_to(cifar / "test")
    return counts


def balance(args) -> None:
    cifar = Path(args.data or SHARED / "cifar10-jpg")
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        data = Path(tmp) / "cifar10-lt"
        counts = long_tailed(cifar, data)
        print(f"long-tailed CIFAR-10: train counts {counts} (sum {sum(counts)}, ratio {max(counts) / min(counts):.1f})")
        rows = []
        for mode in args.modes.split(","):
            for seed in (0, 1):
                name = f"{mode}-{seed}"
                run(
                    [
                        "-q",
                        "train",
                        "--data",
                        str(data),
                        "--recipe",
                        "fast",
                        "--epochs",
                        "30",
                        "--batch-size",
                        "256",
                        "--val-fraction",
                        "0.1",
                        "--balance",
                        mode,
                        "--seed",
                        str(seed),
                        "--out",
                        tmp,
                        "--name",
                        name,
                    ]
                )
                res = json.load(open(os.path.join(tmp, name, "results.json")))
                m = evaluate(os.path.join(tmp, name, "best.pt"), "test")
                rows.append((mode, seed, res["balance"], m["macro_f1"], m["accuracy"]))
                print(
                    f"  --balance {mode} seed {seed} (chose {res['balance']}): test macro-F1 {m['macro_f1']:.4f}, "
                    f"accuracy {m['accuracy']:.4f}",
                    flush=True,
                )
    for mode in args.modes.split(","):
        f1 = [r[3] for r in rows if r[0] == mode]
        acc = [r[4] for r in rows if r[0] == mode]
        print(
            f"--balance {mode}: test macro-F1 {', '.join(f'{v:.4f}' for v in f1)} (mean {sum(f1) / len(f1):.4f}); "
            f"accuracy mean {sum(acc) / len(acc):.4f}"
        )


def finetune(args) -> None:
    data = str(args.data or SHARED / "hymenoptera")
    common = ["--data", data, "--model", "efficientnet_lite0", "--pretrained", "--batch-size", "32"]
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        print(run(["-q", "lr-find", *common, "--freeze", "none", "--out", tmp, "--name", "lrf"]).strip())
        lr = json.load(open(os.path.join(tmp, "lrf", "lr_find.json")))["suggestion"]
        print(f"lr-find suggests {lr:.3g}")
        for name, extra in (
            ("none", ["--freeze", "none"]),
            ("backbone", ["--freeze", "backbone"]),
            ("freeze-epochs-2", ["--freeze-epochs", "2"]),
        ):
            run(["-q", "train", *common, *extra, "--epochs", "10", "--lr", f"{lr:.6g}", "--out", tmp, "--name", name])
            res = json.load(open(os.path.join(tmp, name, "results.json")))
            print(
                f"  {name:16s} best val accuracy {res['best']['accuracy']:.4f} (epoch {res['best_epoch']}), "
                f"{res['total_seconds']:.0f} s",
                flush=True,
            )


def ema(args) -> None:
    data = str(args.data or SHARED / "cifar10-jpg")
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        for name, extra in (("plain", []), ("ema", ["--ema"])):
            run(
                [
                    "-q",
                    "train",
                    "--data",
                    data,
                    "--recipe",
                    "fast",
                    "--time-budget",
                    "5",
                    *extra,
                    "--out",
                    tmp,
                    "--name",
                    name,
                ]
            )
            res = json.load(open(os.path.join(tmp, name, "results.json")))
            m = evaluate(os.path.join(tmp, name, "best.pt"), "test")
            print(
                f"  {name:6s} test accuracy {m['accuracy']:.4f} (best.pt: {res['best_weights']} weights, epoch "
                f"{res['best_epoch']} of {res['epochs']}, {res['steps']} steps, {res['train_seconds']:.0f} s)",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("balance", "finetune", "ema"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--modes", default="none,auto", help="balance: the --balance modes to compare [none,auto]")
    ap.add_argument("--keep", default=None, help="make the temporary run folders under this folder")
    args = ap.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    {"balance": balance, "finetune": finetune, "ema": ema}[args.part](args)


if __name__ == "__main__":
    main()
