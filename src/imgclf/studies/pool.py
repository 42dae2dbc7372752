"""The pool `select` chooses from: its images (a folder or a CSV) less those already labelled, and the model's
probabilities (and pre-head features) for each, computed as `imgclf predict` computes them."""

from __future__ import annotations

import contextlib
import csv
import os

import numpy as np
import torch

from imgclf.core.errors import DataError
from imgclf.core.escape import csv_value
from imgclf.core.fileio import open_text
from imgclf.core.multilabel import MULTILABEL
from imgclf.core.progress import progress
from imgclf.data.images import UnreadableImage
from imgclf.data.sources import is_image_name
from imgclf.infer.predict import expand_paths
from imgclf.models.registry import get_spec


def _csv_paths(path: str, what: str) -> list[str]:
    """The `path` column of a CSV, relative paths taken relative to the CSV's folder."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    fix = "give a UTF-8 CSV with a path column"
    try:
        with open_text(path, what, fix=fix, newline="", error=DataError) as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in cols:
                raise DataError(
                    f"{what} '{path}' needs a header with a path column; it has: {', '.join(cols) or 'none'}"
                )
            reader.fieldnames = cols
            for row in reader:
                p = csv_value((row.get("path") or "").strip())  # selected.csv's cells as `select` wrote them
                if p:
                    out.append(os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p)))
    except (OSError, csv.Error) as e:
        raise DataError(f"cannot read {what} '{path}' ({e}): {fix}") from None
    return out


def read_pool(pool: str) -> list[str]:
    """Absolute image paths of a pool: a folder (walked recursively) or a CSV with a path column."""
    pool = str(pool)
    if not os.path.exists(pool):
        raise DataError(f"pool '{pool}' not found: pass a folder of images or a CSV with a path column")
    if os.path.isdir(pool):
        paths = [os.path.abspath(p) for p in expand_paths([pool])]
    elif pool.lower().endswith(".csv"):
        paths = _csv_paths(pool, "pool CSV")
        if not paths:
            raise DataError(f"pool CSV '{pool}' lists no paths: add rows with a path")
    else:
        raise DataError(f"pool '{pool}' is neither a folder nor a .csv file: pass a folder of images or a CSV")
    return list(dict.fromkeys(paths))  # a path listed twice is one image


def read_labelled(manifests) -> set[str]:
    """Real paths of already-labelled images: CSVs with a path column, or folders (class folders, any depth)."""
    done: set[str] = set()
    for m in manifests or ():
        m = str(m)
        if os.path.isdir(m):
            for dirpath, _, filenames in os.walk(m):
                done.update(os.path.realpath(os.path.join(dirpath, f)) for f in filenames if is_image_name(f))
        elif os.path.isfile(m):
            done.update(os.path.realpath(p) for p in _csv_paths(m, "--exclude manifest"))
        else:
            raise DataError(f"--exclude '{m}' not found: pass a CSV with a path column or a folder of labelled images")
    return done


class HeadInputs:
    """`with HeadInputs(model, "fc") as h: model(x)` -> h.features(): the head's input for each image (N x D),
    the first call of the head in each forward (the plain view, where a model averages test-time views)."""

    def __init__(self, model, head: str):
        self.model, self.head = model, model.get_submodule(head)
        self.batches: list = []
        self._fresh = False

    def _start(self, module, args):
        self._fresh = True

    def _grab(self, module, args):
        if self._fresh:
            self.batches.append(args[0].detach().float().flatten(1).cpu())
            self._fresh = False

    def __enter__(self):
        self._hooks = [
            self.model.register_forward_pre_hook(self._start),
            self.head.register_forward_pre_hook(self._grab),
        ]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()

    def features(self) -> np.ndarray:
        return torch.cat(self.batches).numpy() if self.batches else np.zeros((0, 0), dtype=np.float32)


def score_pool(predictor, paths: list[str], *, features: bool = False):
    """(probabilities N x C, features N x D or None, the readable paths, [(path, reason)] of the others), with
    `predictor`'s model and preprocessing, as `imgclf predict` would run them."""
    classes = {c: i for i, c in enumerate(predictor.classes)}
    grab = HeadInputs(predictor.runner.model, get_spec(predictor.runner.model_name).head) if features else None
    probs, ok, bad = [], [], []
    bs = predictor.batch_size
    if predictor.runner.task == MULTILABEL:
        with grab if grab is not None else contextlib.nullcontext():
            probs, ok, bad = _label_probabilities(predictor, paths)
        return _with_features(probs, grab, ok, bad)
    with grab if grab is not None else contextlib.nullcontext():
        starts = range(0, len(paths), bs)
        for start in progress(starts, total=len(starts), desc="scoring pool", unit="batch", log_every=20):
            for r in predictor.predict(paths[start : start + bs], top_k=len(classes)):
                if "error" in r:
                    bad.append((r["path"], r["error"]))
                    continue
                row = np.zeros(len(classes))
                for t in r["top_k"]:
                    row[classes[t["label"]]] = t["probability"]
                probs.append(row)
                ok.append(r["path"])
    return _with_features(np.asarray(probs).reshape(len(ok), len(classes)), grab, ok, bad)


def _with_features(probs, grab, ok, bad):
    feats = grab.features() if grab is not None else None
    if feats is not None and len(feats) != len(ok):  # one forward per batch of readable images, in order
        raise RuntimeError(f"features of {len(feats)} images for {len(ok)} predictions")
    return probs, feats, ok, bad


def _label_probabilities(predictor, paths: list[str]):
    """A multi-label model's sigmoid probabilities (N x C) of the readable `paths`, with the predictor's
    preprocessing and runner (its temperature applied), one forward per batch of readable images."""
    runner, bs = predictor.runner, predictor.batch_size
    probs, ok, bad = [], [], []
    starts = range(0, len(paths), bs)
    for start in progress(starts, total=len(starts), desc="scoring pool", unit="batch", log_every=20):
        xs = []
        for path in paths[start : start + bs]:
            try:
                xs.append(predictor.transform(predictor.load_uint8(path)))
            except UnreadableImage as e:
                bad.append((path, str(e)))
                continue
            ok.append(path)
        if xs:
            with torch.no_grad():
                probs.append(runner.probabilities(predictor.logits(torch.stack(xs))).float().numpy())
    return (np.concatenate(probs) if probs else np.zeros((0, len(runner.classes)))), ok, bad
