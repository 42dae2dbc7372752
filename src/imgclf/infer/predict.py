"""Predictor: images or paths in, labelled probabilities out, with the checkpoint's own preprocessing."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.core.confidence import check_min_confidence, mark_unsure, multilabel_result, refuse_for_multilabel
from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL, is_threshold
from imgclf.core.ood import check_reject, mark_unknown, usable
from imgclf.data.images import (
    UnreadableImage,
    center_crop,
    load_image,
    normalize_batch,
    pil_to_uint8,
    resize_shorter,
    to_rgb,
)
from imgclf.data.pipeline import eval_transform
from imgclf.data.sources import is_image_name
from imgclf.infer.runtime import open_model
from imgclf.models.tta import check_mode

log = logging.getLogger(__name__)

# Batches decoding in the worker threads while the model runs one: with two, the threads always have an image to
# decode when one finishes, so the cores never wait for the end of a batch (the tail of a batch leaves all but
# one thread idle). With lanes (below), the batches in flight beyond one per lane.
AHEAD = 2


def expand_paths(paths) -> list[str]:
    """Files as given; folders walked recursively for image files, in sorted order."""
    return list(iter_paths(paths))


def iter_paths(paths):
    """`expand_paths`, one path at a time: a folder is walked as it is read, never listed whole."""
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            found = False
            for f in walk_images(p):
                found = True
                yield f
            if not found:
                raise UsageError(f"folder '{p}' holds no image files ({', '.join(('.jpg', '.png', '...'))})")
        elif os.path.exists(p):
            yield p
        else:
            raise UsageError(f"'{p}' not found: pass image files or folders of images")


def walk_images(folder: str):
    """The image files under `folder` (hidden names and links to folders left out), in the order of their sorted
    full paths, one folder's listing in memory at a time. Sorting a folder's entries with "/" after each
    subfolder's name puts them where sorting the full paths would (".", "-" sort before "/", "0" after it)."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        log.warning("cannot list %s: %s", folder, e.strerror or e)
        return
    keyed = []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            continue
        if is_dir and not e.is_symlink():
            keyed.append((e.name + "/", e.path, True))
        elif not is_dir and is_image_name(e.name):
            keyed.append((e.name, e.path, False))
    keyed.sort()
    for _, path, is_dir in keyed:
        if is_dir:
            yield from walk_images(path)
        else:
            yield path


def in_order(submit, depth: int):
    """What `submit()` returns (work started: a batch's futures), in order, with `depth` of them started ahead of
    the one handed out; each one handed out starts the next. `submit()` returning None ends it."""
    ahead = deque(itertools.islice(iter(submit, None), depth))
    while ahead:
        first = ahead.popleft()
        following = submit()
        if following is not None:
            ahead.append(following)
        yield first


def check_threshold(t) -> float | None:
    """A global threshold for every label (predict's --threshold), checked before any work: None, or a number
    from 0 to 1."""
    if t is None:
        return None
    if not is_threshold(t):
        raise UsageError(f"--threshold {str(t)[:20]}: give one number from 0 to 1 for every label, such as 0.5")
    return float(t)


class Predictor:
    """`Predictor("runs/x/best.pt").predict(["a.jpg", "b.png"], top_k=3)`.

    Each result: {"path", "label", "index", "probability", "top_k": [{"label", "probability"}, ...]}, or
    {"path", "error"} for a file that cannot be read or processed (the others still get predictions).

    Probabilities are calibrated with the checkpoint's temperature (imgclf calibrate). `tta`: test-time
    augmentation (none, flip, flip-crop; models/tta.py). `min_confidence` P in (0, 1]: every result gets "unsure", true
    when its top probability is below P, and then its "label" is None; "index", "probability" and "top_k" still
    give the top label and its probability.

    A multi-label model (`task` "multilabel"): each result is {"path", "labels", "scores"}: the label set by the
    model's per-label thresholds (core.multilabel.label_set; possibly empty) and every label's sigmoid
    probability (core.confidence.multilabel_result). `top_k` does not apply (the scores hold every label), and
    `min_confidence` is refused (each label has its own threshold). `threshold` T: T for every label instead of the
    model's own thresholds (a multi-label model only).

    `reject="ood"`: every result gets "unknown" (true when the image's out-of-distribution score is above the
    threshold the model stores, core/ood.mark_unknown) and "ood" ({"score", "value", "threshold"}); an unknown
    image's "label" is None (a multi-label model's "labels" is []), the rest still given. `ood_score`: msp, energy
    or knn (None: knn where the model gives it, else energy). With `min_confidence` too, both apply, each with its
    own field: the label is None when either says so. The logits and the scores come from one forward pass.

    `lanes` (an ONNX file on the CPU, no test-time augmentation outside its graph): the model runs single-threaded,
    as many batches at once as PyTorch would use cores, each lane decoding its own batch (`_lane_batches`); False:
    one batch at a time on every core, with decode threads beside it (the path before lanes, for comparison)."""

    def __init__(
        self,
        weights: str,
        *,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        workers: int | None = None,
        tta: str | None = None,
        min_confidence: float | None = None,
        threshold: float | None = None,
        reject: str | None = None,
        ood_score: str | None = None,
        lanes: bool = True,
    ):
        self.min_confidence = check_min_confidence(min_confidence)
        threshold = check_threshold(threshold)
        # spin=False: onnxruntime's threads sleep between runs, leaving the cores to the decode threads (the server
        # opens its model so too); spin-waiting they took a share of the CPU from decoding. threads=1: an ONNX file
        # on the CPU runs single-threaded in lanes (`lanes`), unless test-time augmentation outside its graph
        # would run PyTorch operations beside it
        lanes = lanes and check_mode(tta) in (None, "none")
        self.runner = open_model(
            weights, device=device, precision=precision, tta=tta, spin=False, threads=1 if lanes else None
        )
        self.lanes = self.runner.lanes()
        self._lane_local = threading.local()
        self.task, self.thresholds = self.runner.task, self.runner.thresholds
        refuse_for_multilabel(self.task, self.min_confidence)
        # the record as this file can use it (no knn where it gives no kNN distance), checked before any image
        self.ood = usable(self.runner.ood, self.runner.gives_knn())
        self.ood_score = check_reject(reject, ood_score, self.ood)
        self.ood_threshold = self.ood["thresholds"][self.ood_score] if self.ood_score else None
        if threshold is not None:
            if self.task != MULTILABEL:
                raise UsageError(
                    f"--threshold is for multi-label models; '{weights}' is single-label (it answers its top "
                    "class): drop --threshold"
                )
            self.thresholds = [threshold] * len(self.runner.classes)
        self.classes: list[str] = list(self.runner.classes)
        self.preprocess = self.runner.preprocess
        self.transform = eval_transform(self.preprocess)
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)

    def load_uint8(self, item) -> torch.Tensor:
        """A path or PIL image as 3 x H x W uint8, its shorter side resized as the model's preprocessing says:
        what `transform` crops and normalises into the model's input (explain maps its heat back through it)."""
        p = self.preprocess
        if isinstance(item, Image.Image):
            return pil_to_uint8(resize_shorter(to_rgb(item), p.resize, p.interpolation))
        return pil_to_uint8(load_image(str(item), resize=p.resize, interpolation=p.interpolation))

    def _load(self, item) -> np.ndarray:
        """A path or PIL image -> the model's input pixels, uint8 S x S x 3 (resized and centre-cropped), in NumPy
        only: a decode thread runs no PyTorch operation, which would start an OpenMP team of its own in every
        decode thread, competing with the model's threads (as the server's decode threads: serve/decode.py)."""
        p = self.preprocess
        if isinstance(item, Image.Image):
            im = resize_shorter(to_rgb(item), p.resize, p.interpolation)
        else:
            im = load_image(str(item), resize=p.resize, interpolation=p.interpolation)
        return self.crop(np.asarray(im, dtype=np.uint8))

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 H x W x 3 with the shorter side `resize` -> its centre crop, S x S x 3, C-contiguous."""
        return np.array(center_crop(pixels, self.preprocess.img_size, channels_last=True), order="C")

    def normalize(self, images: list[np.ndarray]) -> torch.Tensor:
        """The decode threads' crops -> the model's input, N x 3 x S x S float32: `transform`'s arithmetic in
        NumPy (`normalize_batch`, as the server's), its values image by image (tests/unit/infer/test_predict.py).
        Not `transform` on the batch: on 2 cores that cost several times the CPU, PyTorch's OpenMP threads spinning
        against the decode threads."""
        p = self.preprocess
        return torch.from_numpy(normalize_batch(images, p.mean, p.std))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The runner's logits of `batch`; with lanes, called from outside them, its slices run at once, one per
        lane (in a lane, the lane's one run)."""
        if self.lanes == 1 or len(batch) < 2 or getattr(self._lane_local, "inside", False):
            return self.runner.logits(batch)
        with ThreadPoolExecutor(self.lanes) as pool:
            return torch.cat(list(pool.map(self.runner.logits, torch.tensor_split(batch, self.lanes))))

    def predict(self, inputs, *, top_k: int = 5) -> list[dict]:
        single = isinstance(inputs, (str, Path, Image.Image))
        results = list(self.predict_iter([inputs] if single else inputs, top_k=top_k))
        return results[0] if single else results

    def predict_iter(self, inputs, *, top_k: int = 5):
        """The results of `predict`, one at a time, as each batch finishes: `inputs` (paths or PIL images, any
        iterable, read lazily) is never held whole, so millions of files take the memory of AHEAD + 1 batches."""
        for batch in self.predict_batches(inputs, top_k=top_k):
            yield from batch

    def predict_batches(self, inputs, *, top_k: int = 5):
        """One list of results per `batch_size` consecutive inputs. The next AHEAD batches decode in the worker
        threads while the model runs this one; with lanes, `_lane_batches` instead."""
        k = self._k(top_k)
        it = iter(inputs)
        if self.lanes > 1:
            yield from self._lane_batches(it, k)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            for chunk, futures in in_order(lambda: self._submit(pool, it), AHEAD):
                yield self._results(chunk, [f.result() for f in futures], k)

    def _lane_batches(self, it, k: int):
        """`predict_batches` for a runner with lanes (an ONNX file on the CPU, single-threaded): each lane, a thread,
        decodes a whole batch and runs the model on it, so every core is always busy with its own batch: no thread
        waits for another, nor do decoding and the model's threads take the same core (measured against the
        decode threads beside a multi-threaded model: docs/benchmarks.md). The batches come out in input order;
        lanes + AHEAD are in flight, `it` is read here only."""
        with ThreadPoolExecutor(self.lanes) as pool:

            def submit():
                chunk = list(itertools.islice(it, self.batch_size))
                return pool.submit(self._lane, chunk, k) if chunk else None

            for future in in_order(submit, self.lanes + AHEAD):
                yield future.result()

    def _lane(self, chunk: list, k: int) -> list[dict]:
        self._lane_local.inside = True  # this thread is a lane: `logits` runs the batch here, not split again
        return self._results(chunk, [self._try_load(x) for x in chunk], k)

    def _k(self, top_k: int) -> int:
        if int(top_k) < 1:  # as the server's 422: a request for no labels is a mistake, not an empty answer
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        return min(int(top_k), len(self.classes))  # more than the classes: clamp, not crash

    def _submit(self, pool: ThreadPoolExecutor, it):
        chunk = list(itertools.islice(it, self.batch_size))
        return (chunk, [pool.submit(self._try_load, x) for x in chunk]) if chunk else None

    def _results(self, chunk: list, loaded: list, k: int) -> list[dict]:
        ok = [t for t in loaded if isinstance(t, np.ndarray)]
        probs, values = self._forward(self.normalize(ok)) if ok else (None, None)
        answers = self._answers(probs, k) if ok else []
        results, j = [], 0
        for item, t in zip(chunk, loaded):
            name = str(item) if not isinstance(item, Image.Image) else None
            if not isinstance(t, np.ndarray):
                results.append({"path": name, "error": t})
                continue
            r = {"path": name, **answers[j]}
            if values is not None:
                mark_unknown(r, self.ood_score, values[j], self.ood_threshold)
            results.append(r)
            j += 1
        return results

    def _forward(self, batch: torch.Tensor):
        """(probabilities, the rejection's score per image or None): one forward pass either way."""
        if self.ood_score is None:
            return self.runner.probabilities(self.logits(batch)), None
        logits, scores = self.runner.ood_scores(batch)
        return self.runner.probabilities(logits), scores[self.ood_score]

    def _answers(self, probs: torch.Tensor, k: int) -> list[dict]:
        """Each image's answer from its row of probabilities: the multi-label set and scores, or the top k classes
        (one topk for the batch, its numbers taken out as Python lists once: per image it cost ~5% of a Lite0
        int8 prediction's CPU)."""
        if self.task == MULTILABEL:
            return [multilabel_result(row, self.classes, self.thresholds) for row in probs.tolist()]
        top = probs.topk(k, dim=1)
        out = []
        for p, idx in zip(top.values.tolist(), top.indices.tolist()):
            r = {
                "label": self.classes[idx[0]],
                "index": idx[0],
                "probability": p[0],
                "top_k": [{"label": self.classes[i], "probability": q} for q, i in zip(p, idx)],
            }
            out.append(mark_unsure(r, self.min_confidence))
        return out

    def _try_load(self, item):
        try:
            return self._load(item)
        except UnreadableImage as e:
            return str(e)
        except Exception as e:
            detail = str(e).splitlines()[0] if str(e) else ""
            return f"cannot be processed: {type(e).__name__}" + (f": {detail}" if detail else "")
