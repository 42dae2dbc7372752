"""Distillation (`imgclf train --teacher`): the same student trained with and without a teacher, side by side.

Two set-ups (issue 26, check 4):

    hymenoptera   a Lite2 teacher (ImageNet weights, every layer fine-tuned), then EfficientNet-Lite0 students
                  with and without it, per seed: --freeze backbone (the teacher's logits cached with the
                  frozen features) and, with --full, --freeze none (the teacher on the fly on every batch)
    cifar10       an airnet teacher trained longer (--recipe fast, --teacher-epochs), then airnet_small students
                  with and without it at the same --time-budget (the teacher's forward passes come out of the
                  student's budget), test accuracy

    .venv/bin/python benchmarks/distill.py hymenoptera [--seeds 0 1 2] [--epochs 10] [--full] [--teacher T.pt]
    .venv/bin/python benchmarks/distill.py cifar10 [--seeds 0 1 2] [--budget 5] [--teacher-epochs 40]
    add --bench to time student and teacher with `imgclf bench` afterwards (nothing else running)

Every run is a complete `imgclf train`; accuracy is the best checkpoint's on val (hymenoptera) or on the test
split (`imgclf evaluate --split test`, CIFAR-10). Output: runs under --out, a table, and distill.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
IMGCLF = [sys.executable, "-m", "imgclf"]


def train(args: list[str], out: str, name: str) -> dict:
    """One `imgclf train` (reused when OUT/NAME already holds its results.json): results.json."""
    results = os.path.join(out, name, "results.json")
    if not os.path.isfile(results):
        subprocess.run(IMGCLF + ["-q", "train", *args, "--out", out, "--name", name], check=True)
    with open(results) as f:
        return json.load(f)


def test_accuracy(out: str, name: str) -> float:
    return test_accuracy_of(os.path.join(out, name, "best.pt"))


def test_accuracy_of(weights: str) -> float:
    got = subprocess.run(
        IMGCLF + ["-q", "evaluate", weights, "--split", "test", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(got)["accuracy"]


def compare(common: list[str], teacher: str, seeds: list[int], out: str, tag: str, score) -> list[dict]:
    """Per seed: the student without and with the teacher; their accuracies (`score(name, results)`)."""
    rows = []
    for seed in seeds:
        row = {"setting": tag, "seed": seed}
        for kind, extra in (("without", []), ("with", ["--teacher", teacher])):
            name = f"{tag}-{kind}-s{seed}"
            res = train([*common, "--seed", str(seed), *extra], out, name)
            row[kind] = score(name, res)
            if kind == "with":
                row["teacher"] = res["teacher"].get("val_acc")
        rows.append(row)
        print(f"{tag} seed {seed}: without {row['without']:.4f}  with {row['with']:.4f}", flush=True)
    return rows


def hymenoptera(a) -> tuple[list[dict], str, str]:
    data = a.data or str(SHARED / "data" / "hymenoptera")
    teacher = a.teacher
    if teacher is None:
        t = ["--data", data, "--model", "efficientnet_lite2", "--pretrained", "--freeze", "none", "--lr", "0.00278"]
        t += ["--batch-size", "32", "--epochs", str(a.teacher_epochs), "--seed", "0", "--workers", "1"]
        train(t, a.out, "teacher-lite2")
        teacher = os.path.join(a.out, "teacher-lite2", "best.pt")
    val = lambda name, res: res["best"]["accuracy"]  # noqa: E731
    # --ood-bank 0: no kNN bank at the end (the end's fp32 pass over the training images), nothing measured here
    base = ["--data", data, "--model", "efficientnet_lite0", "--pretrained", "--workers", "1", "--ood-bank", "0"]
    frozen = [*base, "--freeze", "backbone", "--epochs", str(a.epochs)]
    rows = compare(frozen, teacher, a.seeds, a.out, "lite0-frozen", val)
    if a.full:
        full = [*base, "--freeze", "none", "--lr", "0.00278", "--batch-size", "32", "--epochs", str(a.full_epochs)]
        rows += compare(full, teacher, a.seeds, a.out, "lite0-full", val)
    return rows, teacher, data


def cifar10(a) -> tuple[list[dict], str, str]:
    data = a.data or str(SHARED / "data" / "cifar10-jpg")
    teacher = a.teacher
    if teacher is None:
        t = ["--data", data, "--recipe", "fast", "--model", "airnet", "--epochs", str(a.teacher_epochs)]
        train([*t, "--seed", "0", "--workers", "1"], a.out, "teacher-airnet")
        teacher = os.path.join(a.out, "teacher-airnet", "best.pt")
    common = ["--data", data, "--recipe", "fast", "--model", "airnet_small", "--time-budget", str(a.budget)]
    rows = compare(
        [*common, "--workers", "1"], teacher, a.seeds, a.out, "airnet_small", lambda n, r: test_accuracy(a.out, n)
    )
    # the teacher's test accuracy, as the students': its val accuracy on a student's split (each seed splits val
    # anew) counts images the teacher trained on wherever that seed is not the teacher's
    teacher_test = test_accuracy_of(teacher)
    for r in rows:
        r["teacher"] = teacher_test
    return rows, teacher, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setup", choices=("hymenoptera", "cifar10"))
    ap.add_argument("--data", help="default: ../shared/data/hymenoptera or ../shared/data/cifar10-jpg")
    ap.add_argument("--out", default="/tmp/imgclf-distill")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher", help="a trained teacher (default: train one first)")
    ap.add_argument("--teacher-epochs", type=int, help="default: 6 (Lite2 fine-tune), 40 (airnet)")
    ap.add_argument("--epochs", type=int, default=10, help="hymenoptera: the frozen-backbone students' epochs")
    ap.add_argument("--full", action="store_true", help="hymenoptera: also --freeze none students (slow)")
    ap.add_argument("--full-epochs", type=int, default=5)
    ap.add_argument("--budget", type=float, default=5, help="cifar10: the students' --time-budget in minutes")
    ap.add_argument("--bench", action="store_true", help="time the last student and the teacher: imgclf bench")
    a = ap.parse_args()
    a.teacher_epochs = a.teacher_epochs or (6 if a.setup == "hymenoptera" else 40)
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    rows, teacher, data = (hymenoptera if a.setup == "hymenoptera" else cifar10)(a)
    print(
        "\n| setting | seed | without a teacher | with the teacher | teacher (cifar10: test) |\n|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(f"| {r['setting']} | {r['seed']} | {r['without']:.4f} | {r['with']:.4f} | {r['teacher']:.4f} |")
    for tag in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == tag]
        w, wo = statistics.mean(r["with"] for r in mine), statistics.mean(r["without"] for r in mine)
        print(f"{tag}: mean without {wo:.4f}, with {w:.4f} ({w - wo:+.4f}) over {len(mine)} seed(s)")
    with open(os.path.join(a.out, "distill.json"), "w") as f:
        json.dump({"teacher": teacher, "rows": rows}, f, indent=1)
    if a.bench:
        student = os.path.join(a.out, f"{rows[-1]['setting']}-with-s{rows[-1]['seed']}", "best.pt")
        subprocess.run(IMGCLF + ["bench", student, teacher, "--data", data], check=True)


if __name__ == "__main__":
    main()
