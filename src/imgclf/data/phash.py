"""Perceptual hashes: 64 bits that stay close when an image is re-encoded, resized, slightly cropped or made a
little brighter, and differ by about half their bits between unrelated images.

The hash is imagehash's `phash` (the low frequencies of a 32x32 grey DCT compared with their median); imgclf's
part is only its form: a Python int of 64 bits (what `check` carries per image), and the bytes faiss's binary
indexes take (`hash_bytes`). Torch-free: `check` computes it in its own decode pass.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BITS = 64  # imagehash's default hash_size 8: an 8x8 bit matrix


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of a decoded image (any mode; imagehash takes its grey levels)."""
    import imagehash  # noqa: PLC0415 - imports scipy: only when a check asks for hashes

    bits = imagehash.phash(image).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_array(pixels: np.ndarray) -> int:
    """The hash of an image in memory (H x W x 3 uint8, or H x W grey), as `phash` of the same pixels as a file."""
    return phash(Image.fromarray(np.ascontiguousarray(pixels)))


def hash_bytes(hashes: list[int]) -> np.ndarray:
    """N x 8 uint8, the rows faiss's binary indexes take (most significant byte first, as `phash` packs them)."""
    raw = b"".join(h.to_bytes(BITS // 8, "big") for h in hashes)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(hashes), BITS // 8)


def hamming(a: int, b: int) -> int:
    """How many of the 64 bits differ."""
    return (a ^ b).bit_count()
