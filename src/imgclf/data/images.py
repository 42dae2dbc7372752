"""Reading one image: any mode PIL reads becomes RGB, EXIF orientation applied, optionally resized on load.

Training, evaluation and prediction all go through `load_image(path, resize=...)`, so an image is turned into
pixels the same way everywhere (a model evaluated here sees exactly what `predict` will feed it).
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# EXIF orientations 2-8: mirrored and/or rotated; 1 (or none) is upright.
_TURNED = frozenset(range(2, 9))


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message is the reason, for listings."""


def to_rgb(im: Image.Image) -> Image.Image:
    # exif_transpose copies an image that needs no turning: call it only when the orientation tag asks for a
    # turn or a flip (a 500 x 375 JPEG's decode and resize: 3.50 -> 3.42 ms).
    if im.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED:
        im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return im
    if im.mode in ("P", "LA", "PA") or (im.mode == "L" and "transparency" in im.info):
        im = im.convert("RGBA")  # palette / grey transparency: go through RGBA so it is not a warning
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        im = Image.fromarray(np.clip(a * (255.0 / max(hi, 1.0)), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def load_image(path: str, *, resize: int | None = None) -> Image.Image:
    """Decode `path` as RGB. With `resize`, the shorter side becomes `resize` pixels (bilinear, antialiased).

    Raises UnreadableImage with a short reason (zero-byte, truncated, not an image, ...).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette chatter; real failures raise
            with Image.open(path) as im:
                if resize is not None and im.format == "JPEG":
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result still covers `resize`:
                    # a 2592x1944 photo headed for 256 px decodes ~8x faster.
                    w, h = im.size
                    s = resize / min(w, h)
                    im.draft("RGB", (max(1, int(w * s)), max(1, int(h * s))))
                im.load()
                im = to_rgb(im)
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"too many pixels ({e})") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage(_unidentified_reason(path)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            msg = "truncated file (" + msg + ")"
        raise UnreadableImage(msg) from None
    except Exception as e:  # noqa: BLE001 - a broken file must never stop a run; it is listed instead
        raise UnreadableImage(f"cannot decode ({type(e).__name__}: {e})") from None
    if resize is not None:
        im = resize_shorter(im, resize)
    return im


def _unidentified_reason(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if not head:
        return "zero-byte file"
    return "not an image (PIL cannot identify the format)"


def resize_shorter(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if min(w, h) == size:
        return im
    if w <= h:
        new = (size, max(1, round(h * size / w)))
    else:
        new = (max(1, round(w * size / h)), size)
    return im.resize(new, Image.BILINEAR, reducing_gap=None)


def pil_to_uint8(im: Image.Image):
    """RGB PIL image -> 3 x H x W uint8 tensor."""
    import torch  # here, so that `imgclf check` does not pay for importing torch

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def array_to_uint8(a: np.ndarray, *, resize: int | None = None):
    """H x W x 3 uint8 array (in-memory datasets) -> 3 x H' x W' uint8 tensor, resized like files are."""
    import torch

    if resize is not None and min(a.shape[:2]) != resize:
        return pil_to_uint8(resize_shorter(Image.fromarray(a), resize))
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()
