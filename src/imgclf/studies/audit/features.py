"""Frozen pretrained features of every image `check --deep` lists: a registry model's pre-head outputs (or a
checkpoint's own backbone, with its own preprocessing), computed in chunks so that memory stays bounded, and
cached under the user's cache, keyed by the model, the preprocessing and the files (path, size, mtime; or the
in-memory pixels), so a second `check --deep` reads them back. Unreadable images are left out (the plain check
reports them). The active-learning simulation (`studies/simulation.py`) uses the same model and extraction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from imgclf.compute.device import resolve_device, to_layout
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import CheckpointError, DataError, UsageError
from imgclf.core.fileio import atomic_open, user_cache_home
from imgclf.data.feed import make_feed
from imgclf.data.pipeline import default_workers, resolve_preprocess
from imgclf.data.sources import Split, hash_split
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.models.registry import build_model, get_spec
from imgclf.training.features import extract

log = logging.getLogger(__name__)

VERSION = 1  # of the cached features' layout and meaning
# images decoded and held at once while extracting features: 1,000 at 256 px are 197 MB of uint8
FEATURE_CHUNK = 1000
# A registry model's input size for small images (shorter side at most SMALL_SIDE): upscaled to SMALL_INPUT,
# not to the model's own 224 px. Measured once (docs/check_deep.md): Lite0 features of 1,500 CIFAR-10 training
# JPEGs, a logistic regression scored on 500 other training images: 64 px 0.63 held-out accuracy, 96 px 0.68,
# 128 px 0.72, 160 px 0.73, 224 px 0.74; 128 px keeps almost all of it for a third of 224 px's pixels.
SMALL_SIDE = 64
SMALL_INPUT = 128


@dataclass
class FeatureModel:
    """A frozen backbone: a pretrained registry model, or an imgclf checkpoint (its own preprocessing)."""

    model: object
    name: str
    prep: object
    label: str  # what it is, for the record
    identity: str  # what the cached features depend on
    device: object
    checkpoint: bool = False

    @staticmethod
    def check(what: str, flag: str = "--features"):
        """The registry entry of a model name (None for a checkpoint file); one line when it cannot give
        pretrained features."""
        if os.path.isfile(what):
            return None
        if what.endswith((".pt", ".pth")) or os.sep in what:
            raise CheckpointError(f"{flag} '{what}' not found: pass a checkpoint file or a model name (imgclf models)")
        spec = get_spec(what)  # unknown: one line with "did you mean"
        if spec.weights is None and spec.pretrained_builder is None:
            raise UsageError(
                f"{what} has no pretrained weights: {flag} needs a pretrained model (imgclf models) or a checkpoint"
            )
        return spec

    @classmethod
    def open(
        cls, what: str, num_classes: int, *, img_size: int | None, device: str, flag: str = "--features"
    ) -> FeatureModel:
        dev = resolve_device(device)
        if os.path.isfile(what):
            if img_size is not None:
                raise UsageError(
                    "--img-size is for a registry model: a checkpoint's features use its own preprocessing"
                )
            ckpt = load_checkpoint(what)
            st = os.stat(what)
            ident = f"{os.path.abspath(what)}\0{st.st_size}\0{st.st_mtime_ns}"
            model = model_from_checkpoint(ckpt, dev, path=what)
            prep = Preprocess.from_dict(ckpt["preprocess"])
            return cls(model, ckpt["model"]["name"], prep, f"checkpoint {what}", ident, dev, checkpoint=True)
        spec = cls.check(what, flag)
        prep = resolve_preprocess(spec, img_size=img_size, pretrained=True, own_size=None)
        model = to_layout(build_model(what, num_classes, pretrained=True).to(dev), True).eval()
        return cls(model, what, prep, f"{what} (pretrained, frozen)", f"{what}\0pretrained", dev)


def input_size(model: str, shorter_side: int | None) -> int | None:
    """The input size for a registry model's features: SMALL_INPUT for small images (CIFAR's 32 px), the
    model's own otherwise (None). A checkpoint always uses its own preprocessing."""
    if os.path.isfile(model) or shorter_side is None or shorter_side > SMALL_SIDE:
        return None
    return min(SMALL_INPUT, get_spec(model).img_size)


def split_features(fm: FeatureModel, split: Split, batch_size: int, desc: str, *, workers: int | None = None):
    """(pre-head features N x D float32 of the readable images, their indices in `split`, [(path, reason)] of
    the others), computed FEATURE_CHUNK images at a time."""
    log.info("%s: %d images through %s at %d px", desc, len(split), fm.name, fm.prep.img_size)
    xs, kept, bad_all = [], [], []
    for lo in range(0, len(split), FEATURE_CHUNK):
        idx = range(lo, min(lo + FEATURE_CHUNK, len(split)))
        part = split.subset(idx)
        feed, bad = make_feed(
            part,
            fm.prep,
            cache="memory",
            workers=workers or default_workers(),
            eval_batch_size=batch_size,
            desc=f"decode {desc}",
        )
        bad_all += bad
        failed = {p for p, _ in bad}
        kept += [i for i in idx if split.describe(i) not in failed]
        if len(feed):
            xs.append(extract(fm.model, fm.name, feed.batches(), fm.device, None, desc=desc).numpy())
    if not xs:
        raise DataError(f"none of the {len(split)} images of split '{split.name}' could be read")
    return np.concatenate(xs).astype(np.float32), np.asarray(kept, dtype=np.int64), bad_all


def feature_cache_root() -> str:
    """Where features are cached: $IMGCLF_CACHE/features (the tests' temporary cache), else the user's cache."""
    return os.path.join(os.environ.get("IMGCLF_CACHE") or user_cache_home(), "features")


def feature_key(fm: FeatureModel, split: Split) -> str:
    """What the features depend on: the model, its preprocessing, and the files (path, size, mtime) or pixels;
    not the labels (a relabelled image keeps its features)."""
    h = hashlib.sha1(f"v{VERSION}\0{fm.identity}\0{json.dumps(fm.prep.to_dict(), sort_keys=True)}".encode())
    hash_split(h, Split(split.name, [0] * len(split), split.paths, split.arrays, split.ids))
    return h.hexdigest()[:24]


def cached_split_features(fm: FeatureModel, split: Split, *, batch_size: int, workers: int | None = None):
    """`split_features`, read from the cache when the same model, preprocessing and files made it (a hit is
    logged), else computed and written there atomically. Returns (features, kept indices, hit)."""
    path = os.path.join(feature_cache_root(), f"{feature_key(fm, split)}.npz")
    if os.path.isfile(path):
        with contextlib.suppress(Exception):  # unreadable or torn: computed afresh below
            with np.load(path) as d:
                x, kept = d["x"], d["kept"]
            log.info("features of %d images from the cache (%s)", len(kept), path)
            return x, kept, True
    x, kept, _ = split_features(fm, split, batch_size, "features", workers=workers)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "wb", need=x.nbytes + kept.nbytes) as f:
        np.savez(f, x=x, kept=kept)
    return x, kept, False


def l2_normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
