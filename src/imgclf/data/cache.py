"""The decoded-image cache: every image decoded once into one uint8 array (N x 3 x S x S), kept in memory or
in a memory-mapped file reused by later runs.

S is the evaluation resize: the shorter side is resized to S (only when larger or smaller than S) and the
centre S x S kept, so a 32x32 CIFAR image is stored as is and a 2592x1944 photo headed for 224 px as 256x256.
The file is keyed by the files (paths, sizes, modification times) or the in-memory arrays, and by S; a change
to any of them is a new key, so stale data is never read. Unreadable files are listed in the metadata and
left out, exactly as the per-image path does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from filelock import FileLock

from imgclf.core.fileio import user_cache_home
from imgclf.core.progress import progress
from imgclf.data.images import MAX_PIXELS, UnreadableImage, center_crop, max_pixels
from imgclf.data.pipeline import decode_one
from imgclf.data.sources import Split, hash_split

log = logging.getLogger(__name__)
VERSION = 1


def cache_root() -> str:
    if os.environ.get("IMGCLF_CACHE"):
        return os.environ["IMGCLF_CACHE"]
    return os.path.join(user_cache_home(), "decoded")


def split_key(split: Split, size: int, interpolation: str = "bilinear") -> str:
    # bilinear keys as before it could be chosen, so the caches already on disk stay valid; so does the default
    # pixel limit (a file over --max-pixels is left out, so another limit is another cache)
    extra = "" if interpolation == "bilinear" else interpolation + "\0"
    extra += "" if max_pixels() == MAX_PIXELS else f"px{max_pixels()}\0"
    h = hashlib.sha1(f"v{VERSION}\0{size}\0{extra}".encode())
    hash_split(h, split)
    return h.hexdigest()[:24]


@dataclass
class Decoded:
    split: Split  # without the unreadable files
    images: torch.Tensor  # N x 3 x S x S uint8 (memory-mapped when from disk)
    bad: list  # [(path, reason)]
    hit: bool  # read from an existing cache file


def _decode(split: Split, i: int, size: int, interpolation: str) -> torch.Tensor:
    return center_crop(decode_one(split, i, size, interpolation), size)


def decode_all(
    split: Split, size: int, out: np.ndarray | None, *, workers: int, desc: str, interpolation: str = "bilinear"
) -> dict[int, str]:
    """Decode every image of `split` into out[i] (out=None: only check that it decodes), resizing with
    `interpolation`; returns {index: reason} for the images that could not be decoded."""
    errors: dict[int, str] = {}

    def work(i):
        try:
            t = _decode(split, i, size, interpolation)
            if out is not None:
                out[i] = t.numpy()
        except UnreadableImage as e:
            errors[i] = str(e)

    with ThreadPoolExecutor(max(1, workers)) as ex:  # PIL releases the GIL while decoding and resizing
        for _ in progress(ex.map(work, range(len(split)), chunksize=64), total=len(split), desc=desc, unit="img"):
            pass
    return errors


def load_decoded(
    split: Split, size: int, *, cache: str = "disk", workers: int = 2, desc: str = "", interpolation: str = "bilinear"
) -> Decoded:
    """The split as one uint8 tensor. cache: "disk" (memory-mapped file under cache_root(), reused) or "memory"."""
    desc = desc or f"decode {split.name}"
    n = len(split)
    kw = dict(workers=workers, desc=desc, interpolation=interpolation)
    if cache == "memory":
        arr = np.zeros((n, 3, size, size), dtype=np.uint8)
        errors = decode_all(split, size, arr, **kw)
        return _result(split, torch.from_numpy(arr), errors, hit=False)

    root = cache_root()
    key = split_key(split, size, interpolation)
    data_path, meta_path = os.path.join(root, f"{key}.u8"), os.path.join(root, f"{key}.json")
    found = _cached(split, size, data_path, meta_path)
    if found is not None:
        return found
    os.makedirs(root, exist_ok=True)
    # Under torchrun every rank asks for the same split at once: one decodes it, the others wait and map its file.
    with FileLock(os.path.join(root, f"{key}.lock")):
        found = _cached(split, size, data_path, meta_path)
        return found if found is not None else _build(split, size, key, root, data_path, meta_path, kw)


def _cached(split: Split, size: int, data_path: str, meta_path: str) -> Decoded | None:
    """The cached decoded split, or None when there is none (or it cannot be read)."""
    if not (os.path.exists(meta_path) and os.path.exists(data_path)):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        good = meta["good"]
        mm = np.memmap(data_path, dtype=np.uint8, mode="c", shape=(len(good), 3, size, size))
        kept = split if len(good) == len(split) else split.subset(good)
        return Decoded(kept, torch.from_numpy(mm), [tuple(b) for b in meta["bad"]], hit=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("decoded cache %s unreadable (%s); rebuilding it", data_path, e)
        return None


def _build(split: Split, size: int, key: str, root: str, data_path: str, meta_path: str, kw: dict) -> Decoded:
    n = len(split)
    need = n * 3 * size * size
    free = shutil.disk_usage(root).free
    if need > free // 2:
        log.warning(
            "decoded cache for %s needs %.1f GB but %s has %.1f GB free; keeping it in memory instead",
            split.name,
            need / 1e9,
            root,
            free / 1e9,
        )
        return load_decoded(split, size, cache="memory", **kw)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".u8", dir=root)
    os.close(fd)
    try:
        mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, 3, size, size))
        errors = decode_all(split, size, mm, **kw)
        _, good, bad = drop_unreadable(split, errors)
        if errors:  # compact: the file holds only readable images, in order
            mm2 = np.memmap(tmp + ".c", dtype=np.uint8, mode="w+", shape=(len(good), 3, size, size))
            for j in range(0, len(good), 4096):
                mm2[j : j + 4096] = mm[good[j : j + 4096]]
            mm2.flush()
            del mm, mm2
            os.replace(tmp + ".c", tmp)
        else:
            mm.flush()
            del mm
        os.replace(tmp, data_path)
        meta = {"version": VERSION, "size": size, "count": n, "good": good, "bad": bad}
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f)
        os.replace(meta_path + ".tmp", meta_path)
    finally:
        for p in (tmp, tmp + ".c"):
            if os.path.exists(p):
                os.unlink(p)
    built = _cached(split, size, data_path, meta_path)  # read back through the mmap
    if built is None:
        raise OSError(f"the decoded cache {data_path} just written cannot be read back")
    built.hit = False
    return built


def drop_unreadable(split: Split, errors: dict[int, str]) -> tuple[Split, list[int], list]:
    """(the split without the failed images, the kept indices, [(path, reason)] of the failed ones)."""
    good = [i for i in range(len(split)) if i not in errors]
    kept = split if not errors else split.subset(good)
    return kept, good, [(split.describe(i), errors[i]) for i in sorted(errors)]


def _result(split: Split, images: torch.Tensor, errors: dict, hit: bool) -> Decoded:
    kept, good, bad = drop_unreadable(split, errors)
    return Decoded(kept, images[good] if errors else images, bad, hit)
