"""check's decode pass: every image of a listing decoded once (in worker processes for many files), with what
was found in it (`ImageInfo`: format, mode, size, the digest of its pixels that finds exact duplicates, and its
perceptual hash when asked), or why it failed; in-memory images (digits, cifar) digested the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import statistics
import sys
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgclf.data.images import BadShape, UnreadableImage, check_pixels, check_shape, load_image, max_pixels, to_rgb
from imgclf.data.phash import phash as perceptual_hash
from imgclf.data.phash import phash_array

SERIAL_BELOW = 64  # starting worker processes costs more than decoding a handful of images


class ImageInfo(NamedTuple):
    """What the decode pass found in a readable image."""

    format: str  # PIL's format name ("array" for an in-memory image)
    mode: str
    width: int
    height: int
    digest: bytes  # of the decoded RGB pixels and the size: equal for exact pixel duplicates
    phash: int | None = None  # the 64-bit perceptual hash (data/phash.py), when asked for


def decode_all(paths: list[str], *, workers: int | None, progress: bool, phash: bool) -> list[tuple[str, object]]:
    n = workers or os.cpu_count() or 1
    out: list[tuple[str, object]] = []
    with tqdm(total=len(paths), desc="check", unit="img", file=sys.stderr, disable=not progress) as bar:
        if n <= 1 or len(paths) < SERIAL_BELOW:
            for p in paths:
                out.append(inspect_file(p, max_pixels(), phash))
                bar.update()
            return out
        # Processes, not threads: decoding tiny JPEGs is GIL-bound (threads were slower on CIFAR-10: see
        # docs/benchmarks.md).
        # Chunks amortise the pickling, but stay small enough that a few large photos spread over all workers.
        chunk = max(1, min(256, len(paths) // (n * 8)))
        with ProcessPoolExecutor(n) as ex:
            for r in ex.map(
                inspect_file, paths, itertools.repeat(max_pixels()), itertools.repeat(phash), chunksize=chunk
            ):
                out.append(r)
                bar.update()
    return out


def inspect_file(path: str, limit: int, phash: bool = False) -> tuple[str, object]:
    """("ok", ImageInfo) or (error kind, reason). Runs in worker processes; `limit`: the pixel limit
    (--max-pixels), passed along as a worker may not share this process's; `phash`: also the perceptual hash."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte", "zero-byte file"
    except OSError as e:
        return "unreadable", f"cannot read ({e.strerror})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                fmt, mode = im.format, im.mode
                check_pixels(*im.size, limit)  # what training would refuse: before decoding, which could take
                check_shape(*im.size)  # gigabytes
                im.load()  # the full decode: open() and verify() both pass a JPEG cut in half
                rgb = to_rgb(im)
    except BadShape as e:
        return "bad-shape", str(e)
    except Exception as first:
        # Take the reason from the loader that training uses, so check and training agree on what is broken.
        try:
            load_image(path)
        except UnreadableImage as e:
            reason = str(e)
        except Exception as e:  # the loader does not catch it: training would crash on this file
            reason = f"{type(e).__name__}: {e}"
        else:
            reason = f"{type(first).__name__}: {first}"
        return _error_kind(reason), reason
    w, h = rgb.size
    digest = hashlib.blake2b(f"{w}x{h}".encode(), digest_size=16)
    digest.update(rgb.tobytes())
    return "ok", ImageInfo(fmt, mode, w, h, digest.digest(), perceptual_hash(rgb) if phash else None)


def _error_kind(reason: str) -> str:
    if reason.startswith("zero-byte"):
        return "zero-byte"
    if "truncated" in reason:
        return "truncated"
    if reason.startswith("not an image"):
        return "not-an-image"
    return "unreadable"


def inspect_array(pixels: np.ndarray, phash: bool) -> tuple[str, ImageInfo]:
    """An in-memory image as `inspect_file` sees a file: digested by its size and RGB pixels."""
    rgb = np.ascontiguousarray(pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1))
    h, w = rgb.shape[:2]
    digest = hashlib.blake2b(f"{w}x{h}".encode(), digest_size=16)
    digest.update(rgb.tobytes())
    return "ok", ImageInfo("array", "RGB", w, h, digest.digest(), phash_array(rgb) if phash else None)


def size_summary(infos: list[tuple]) -> dict | None:
    """The sizes of decoded images (`ImageInfo`s): width and height min/median/max, distinct sizes, the commonest."""
    if not infos:
        return None
    ws, hs = [i[2] for i in infos], [i[3] for i in infos]
    sizes = Counter((i[2], i[3]) for i in infos)
    (cw, ch), cn = sizes.most_common(1)[0]
    return {
        "width": {"min": min(ws), "median": statistics.median_low(ws), "max": max(ws)},
        "height": {"min": min(hs), "median": statistics.median_low(hs), "max": max(hs)},
        "distinct": len(sizes),
        "most_common": {"width": cw, "height": ch, "count": cn},
    }
