"""Multi-label on CIFAR-10 mosaics (issue 24, checks 1-4), from the folder benchmarks/make_mosaics.py writes.

1. `imgclf train mosaics.csv --recipe fast --epochs E --batch-size 256` (the multi-label model: sigmoid outputs,
   BCE, thresholds fitted on val) against the single-label reference: `imgclf train tiles.csv --recipe fast
   --epochs E` on the same tiles (an epoch of either sees every training tile once, in steps of the same pixels:
   256 mosaics or the recipe's 1,024 tiles), applied per tile to the test mosaics (a mosaic's label set: the classes
   its four tiles are given; its score for a class: 1 - prod over tiles (1 - p_tile(class)), the chance that some
   tile shows it). Test mAP (macro) and per-label F1 of both.
2. The multi-label model's fitted thresholds against a global 0.5: micro-F1 on test (fitted on val only).
3. `imgclf calibrate` (a temperature per label, fitted on val): per-label ECE on test before and after.
4. The label sets of the checkpoint, its onnx and onnx-int8 exports (imgclf export), `imgclf serve` (the
   checkpoint) and the slim server `imgclf-serve` (the onnx file) on the test mosaics: per-label agreement and
   whole-set agreement with the checkpoint.

    .venv/bin/python benchmarks/multilabel.py [--mosaics /tmp/mosaics] [--out /tmp/multilabel] [--epochs 10]
        [--budget MINUTES]

Each training run gets the same budget: epochs (the same pixels), or `--budget` minutes (then run with the
machine to oneself, as the budget is time). Runs already in --out are reused.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

IMGCLF = [sys.executable, "-m", "imgclf"]


def train(data: Path, out: Path, name: str, budget: list[str]) -> Path:
    run = out / "runs" / name
    if not (run / "best.pt").exists():
        t = time.perf_counter()
        # --ood-bank 0: no kNN bank of the training images at the end (a pass of airnet's six views each), unused here
        cmd = [*IMGCLF, "train", "--data", str(data), "--recipe", "fast", "--ood-bank", "0", *budget]
        subprocess.run([*cmd, "--out", str(out / "runs"), "--name", name, "-q"], check=True)
        print(f"{name}: trained in {time.perf_counter() - t:.0f} s", flush=True)
    return run / "best.pt"


def test_mosaics(mosaics: Path) -> tuple[list[str], list[str], np.ndarray]:
    """The test mosaics' absolute paths, the classes, and their multi-hot targets (the manifest's own rules)."""
    from imgclf.data.sources import open_source

    src = open_source(str(mosaics / "mosaics.csv"))
    test = src.splits["test"]
    return list(test.paths), list(src.classes), test.targets.astype(np.int64)


def ml_scores(weights: str, paths: list[str], classes: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """Each path's scores (classes order) and label set from a multi-label model file (checkpoint or export)."""
    from imgclf import Predictor

    res = Predictor(str(weights), device="cpu", batch_size=64).predict(paths)
    scores = np.array([[r["scores"][c] for c in classes] for r in res])
    return scores, [r["labels"] for r in res]


def reference(tiles_best: Path, mosaics: Path, paths: list[str], classes: list[str]):
    """The per-tile model on each test mosaic's four tiles: noisy-OR scores and the union of the tiles' labels."""
    import csv

    from imgclf import Predictor

    rows = [r for r in csv.DictReader(open(mosaics / "tiles.csv")) if r["split"] == "test"]
    res = Predictor(str(tiles_best), device="cpu", batch_size=256).predict([r["path"] for r in rows], top_k=10)
    index = {str((mosaics / r["mosaic"]).resolve()): [] for r in rows}
    for r, p in zip(rows, res):
        index[str((mosaics / r["mosaic"]).resolve())].append(p)
    scores = np.zeros((len(paths), len(classes)))
    sets = []
    for i, path in enumerate(paths):
        tiles = index[str(Path(path).resolve())]
        probs = np.array(
            [[{t["label"]: t["probability"] for t in p["top_k"]}.get(c, 0.0) for c in classes] for p in tiles]
        )
        scores[i] = 1.0 - np.prod(1.0 - probs, axis=0)
        sets.append(sorted({p["label"] for p in tiles}))
    return scores, sets


def set_metrics(sets: list[list[str]], targets: np.ndarray, classes: list[str]) -> dict:
    from sklearn.metrics import f1_score

    pred = np.array([[int(c in s) for c in classes] for s in sets])
    per = f1_score(targets, pred, average=None, zero_division=0)
    return {
        "micro_f1": float(f1_score(targets, pred, average="micro", zero_division=0)),
        "macro_f1": float(per.mean()),
        "per_label_f1": {c: round(float(f), 4) for c, f in zip(classes, per)},
        "exact_match": float((pred == targets).all(axis=1).mean()),
    }


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(np.mean([average_precision_score(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]))


def ece_per_label(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """Each label's expected calibration error of its sigmoid score: evaluate's own measure (15 bins)."""
    from imgclf.evaluation.label_calibration import binary_ece

    return [float(binary_ece(scores[:, k], targets[:, k])) for k in range(targets.shape[1])]


def served_sets(cmd: list[str], paths: list[str], per_request: int = 16) -> list[list[str]]:
    """The label sets a server started by `cmd` (on 127.0.0.1, port 0) answers for `paths`, in order."""
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                sys.exit(f"server {cmd} did not start")
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if urllib.request.urlopen(url + "/ready", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        out = []
        for i in range(0, len(paths), per_request):
            out += [r["labels"] for r in post(url + "/predict", paths[i : i + per_request])]
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def post(url: str, paths: list[str]) -> list[dict]:
    b = uuid.uuid4().hex
    body = b""
    for p in paths:
        head = f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{Path(p).name}"\r\n'
        body += (head + "Content-Type: image/png\r\n\r\n").encode() + Path(p).read_bytes() + b"\r\n"
    body += f"--{b}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    return answer["predictions"] if isinstance(answer, dict) and "predictions" in answer else answer


def agreement(sets: list[list[str]], ref: list[list[str]], classes: list[str]) -> dict:
    a = np.array([[c in s for c in classes] for s in sets])
    b = np.array([[c in s for c in classes] for s in ref])
    return {"per_label": float((a == b).mean()), "whole_set": float((a == b).all(axis=1).mean())}


def check_four(best: Path, out: Path, paths: list[str], classes: list[str], sets: list[list[str]]) -> dict:
    res = {}
    for fmt in ("onnx", "onnx-int8"):
        f = out / f"model-{fmt}.onnx"
        if not f.exists():
            subprocess.run([*IMGCLF, "export", str(best), "--format", fmt, "--out", str(f), "-q"], check=True)
        res[fmt] = agreement(ml_scores(str(f), paths, classes)[1], sets, classes)
    res["serve"] = agreement(served_sets([*IMGCLF, "serve", str(best)], paths), sets, classes)
    slim = [str(Path(sys.executable).parent / "imgclf-serve"), str(out / "model-onnx.onnx")]
    res["slim"] = agreement(served_sets(slim, paths), sets, classes)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mosaics", type=Path, default=Path("/tmp/mosaics"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/multilabel"))
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each model (the same tiles seen as often)")
    ap.add_argument("--budget", type=float, help="minutes of training for each model instead of --epochs")
    ap.add_argument(
        "--mosaic-batch",
        type=int,
        default=256,
        help="the multi-label run's --batch-size: 256 mosaics are the pixels of the fast recipe's 1,024 tiles, so both "
        "models take the same steps of the same pixels (with 1,024 mosaics the multi-label model got 4x fewer steps)",
    )
    a = ap.parse_args()
    budget = ["--time-budget", str(a.budget)] if a.budget else ["--epochs", str(a.epochs)]
    a.out.mkdir(parents=True, exist_ok=True)
    from imgclf.compute.machine import machine_report, summary_line

    print(summary_line(machine_report()), flush=True)
    best = train(a.mosaics / "mosaics.csv", a.out, "mosaics", [*budget, "--batch-size", str(a.mosaic_batch)])
    tiles_best = train(a.mosaics / "tiles.csv", a.out, "tiles", budget)
    paths, classes, targets = test_mosaics(a.mosaics)
    scores, sets = ml_scores(str(best), paths, classes)
    ref_scores, ref_sets = reference(tiles_best, a.mosaics, paths, classes)
    ckpt = json.loads(json.dumps(__import__("torch").load(best, weights_only=True)["thresholds"]))
    res = {
        "check1": {
            "multilabel": {"mAP": mean_ap(scores, targets), **set_metrics(sets, targets, classes)},
            "per_tile_reference": {"mAP": mean_ap(ref_scores, targets), **set_metrics(ref_sets, targets, classes)},
        },
        "check2": {
            "fitted": set_metrics(sets, targets, classes)["micro_f1"],
            "global_0.5": set_metrics([[c for c, s in zip(classes, r) if s >= 0.5] for r in scores], targets, classes)[
                "micro_f1"
            ],
            "thresholds": dict(zip(classes, ckpt)),
        },
    }
    calibrated = a.out / "calibrated.pt"
    if not calibrated.exists():  # calibrate writes into the checkpoint it is given: a copy
        shutil.copy(best, calibrated)
        subprocess.run([*IMGCLF, "calibrate", str(calibrated), "--split", "val"], check=True)
    after = ml_scores(str(calibrated), paths, classes)[0]
    before_ece, after_ece = ece_per_label(scores, targets), ece_per_label(after, targets)
    res["check3"] = {
        c: {"before": round(b, 4), "after": round(x, 4)} for c, b, x in zip(classes, before_ece, after_ece)
    }
    res["check3"]["mean"] = {"before": float(np.mean(before_ece)), "after": float(np.mean(after_ece))}
    res["check4"] = check_four(best, a.out, paths, classes, sets)
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
