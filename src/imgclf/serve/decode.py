"""Uploaded bytes -> the model's input pixels, exactly as `Predictor` prepares a file, with the server's limits.

Split in two so the expensive part runs in parallel and the cheap part runs once per batch:

- `decode_upload` (a decode thread; libjpeg-turbo and PIL release the GIL while they decode and resize; the
  decoder is data.images.decode_image, the one every file goes through): bytes -> RGB ->
  shorter side `resize` -> centre crop, giving uint8 S x S x 3. Refuses, from the header
  and before any pixel is decoded, an image with more than `max_pixels` pixels (a decompression bomb: a few
  KB of PNG can claim 50,000 x 50,000 pixels, 7.5 GB of RGB), and one whose shape resizing would blow up
  (`data.images.check_shape`, the same check every file loader makes: a 1 KB PNG of 400000 x 1 pixels is
  under any pixel limit, but its shorter side resized to 256 px asks for 78 GB).
- the model thread, on the stacked batch: uint8 N x S x S x 3 -> float32 N x 3 x S x S, scaled and normalised
  with the model's mean and std. `normalize_batch` (the ONNX path) does `eval_transform`'s arithmetic in NumPy;
  PyTorch models run `eval_transform` itself (`runner_model.NormalizeUploads`, bit-for-bit `Predictor`'s input).

Without torch at import: the slim ONNX server (`imgclf-serve`) uses this module and never loads PyTorch.
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
from PIL import Image

from imgclf.data.images import BadShape, center_crop, check_shape, decode_image, normalize_batch, resize_shorter

__all__ = ["ImageRejected", "decode_upload", "normalize_batch", "open_upload"]

log = logging.getLogger(__name__)

# Formats the server opens. Pillow can also open EPS (through Ghostscript, an external interpreter) and a
# long tail of rare formats; a service facing strangers only needs the ones cameras and browsers produce.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")


class ImageRejected(Exception):
    """An upload that is not a usable image. `code` is machine-readable; str(self) is the reason."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code, self.status = code, status


def decode_upload(data: bytes, preprocess, *, max_pixels: int) -> np.ndarray:
    """One uploaded file -> uint8 S x S x 3 array (S = preprocess.img_size; channels last, C-contiguous).
    `preprocess`: a core.artifact.Preprocess (anything with img_size, resize and interpolation).
    Raises ImageRejected."""
    im = open_upload(data, resize=preprocess.resize, max_pixels=max_pixels, draft=True)
    pixels = np.asarray(resize_shorter(im, preprocess.resize, preprocess.interpolation), dtype=np.uint8)
    # In numpy, on purpose: a decode thread must not run PyTorch operations, which would start OpenMP teams of
    # their own in every decode thread and spin against the model's threads (on 2 cores that cost as much CPU
    # as the JPEG decode). Channels stay last: the batch is permuted once, in the model thread.
    crop = center_crop(pixels, preprocess.img_size, channels_last=True)
    return np.array(crop, order="C")  # one copy, writable


def open_upload(data: bytes, *, resize: int, max_pixels: int, draft: bool = False) -> Image.Image:
    """One uploaded file -> the whole image, decoded, upright and RGB, with every check of `decode_upload`
    (formats, the pixel limit from the header, the shape `resize` px on the shorter side allows). `draft`: let
    libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale where that still covers `resize` (what `decode_upload` and
    `Predictor` do for a file); off, the full image (what an explanation overlay is drawn on).
    Raises ImageRejected."""
    if not data:
        raise ImageRejected("empty_file", "empty file (0 bytes)")

    def check(w: int, h: int) -> None:  # from the header, before a pixel is decoded
        if w * h > max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"image is {w} x {h} = {w * h:,} pixels, more than the limit of {max_pixels:,} (--max-pixels)",
                status=413,
            )
        try:
            check_shape(w, h, resize)
        except BadShape as e:
            raise ImageRejected("bad_shape", str(e)) from None

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF chatter, DecompressionBombWarning: our own limit is below
            # as data.images.load_image (the same decoder): the same pixels Predictor gets from the same file
            im = decode_image(data, resize if draft else None, check=check, formats=IMAGE_FORMATS)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own check, at open, above 2 x Image.MAX_IMAGE_PIXELS
        m = re.search(r"\((\d+) pixels\)", str(e))
        n = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageRejected(
            "too_many_pixels", f"image has {n}, more than the limit of {max_pixels:,} (--max-pixels)", status=413
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(
            "not_an_image", "not an image (accepted formats: " + ", ".join(IMAGE_FORMATS) + ")"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg or isinstance(e, EOFError):
            raise ImageRejected("truncated_image", f"truncated image ({msg})") from None
        raise ImageRejected("unreadable_image", f"cannot decode the image ({msg})") from None
    except MemoryError:
        raise ImageRejected("unreadable_image", "cannot decode the image (out of memory)") from None
    except Exception as e:
        raise ImageRejected("unreadable_image", f"cannot decode the image ({type(e).__name__}: {e})") from None
    return im
