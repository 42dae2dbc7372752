"""Reading one image: any mode PIL reads becomes RGB, EXIF orientation applied, optionally resized on load.

Training, evaluation and prediction all go through `load_image(path, resize=...)`, so an image is turned into
pixels the same way everywhere (a model evaluated here sees exactly what `predict` will feed it).

torch is imported only by the functions that make tensors: the torch-free server (imgclf-serve) and
`imgclf check` use this module without it.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from imgclf.core.artifact import INTERPOLATION_NAMES
from imgclf.core.shared_options import MAX_PIXELS as PIXEL_OPTION
from imgclf.data import jpeg

# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# PIL's filter for each resampling name a Preprocess may take (core/artifact.py's INTERPOLATION_NAMES)
INTERPOLATIONS = {name: getattr(Image, name.upper()) for name in INTERPOLATION_NAMES}

# EXIF orientations 2-8: mirrored and/or rotated; 1 (or none) is upright. The turn of each, as Pillow's
# ImageOps.exif_transpose makes it.
_TURNED = frozenset(range(2, 9))
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message is the reason, for listings."""


class BadShape(UnreadableImage):
    """An image whose width and height make it unusable (see `check_shape`); refused from its header."""


class TooManyPixels(BadShape):
    """An image over the pixel limit (`check_pixels`); refused from its header."""


# The largest image any command decodes, in pixels (width x height), read from the file's header before a pixel
# is decoded: an 81 MP JPEG costs ~1.7 GB to decode (and a decompression bomb of a few KB far more). The default
# of every command's --max-pixels (core/shared_options.py), the server's included.
MAX_PIXELS = PIXEL_OPTION.default  # 40,000,000
_limit = {"max_pixels": MAX_PIXELS}


def set_max_pixels(n: int) -> None:
    """The pixel limit of every image this process decodes from a file (`load_image`, `imgclf check`), for the
    CLI's --max-pixels (the CLI owns the process; library callers keep MAX_PIXELS, or use `pixel_limit`).
    Above Pillow's own decompression-bomb limit, that one is raised to match, so that the flag is the limit."""
    if n < 1:
        raise ValueError(f"the pixel limit must be positive, got {n}")
    _limit["max_pixels"] = int(n)
    if Image.MAX_IMAGE_PIXELS is not None and n > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = int(n)


@contextlib.contextmanager
def pixel_limit(n: int):
    """`set_max_pixels(n)` while the block runs (a command), then the limits as they were (Pillow's too): a
    program that calls `imgclf.cli.main` twice gets each call's own."""
    before = _limit["max_pixels"], Image.MAX_IMAGE_PIXELS
    set_max_pixels(n)
    try:
        yield
    finally:
        _limit["max_pixels"], Image.MAX_IMAGE_PIXELS = before


def max_pixels() -> int:
    return _limit["max_pixels"]


def check_pixels(width: int, height: int, limit: int | None = None) -> None:
    """Refuse, from the header size alone, an image of more than `limit` (default: this process's limit)
    pixels: TooManyPixels (an UnreadableImage) with the size, the limit and the flag that raises it."""
    limit = max_pixels() if limit is None else limit
    if width * height > limit:
        raise TooManyPixels(
            f"image is {width:,} x {height:,} = {width * height:,} pixels, more than the limit of {limit:,}: "
            "pass --max-pixels N to decode it"
        )


# The longest side may be at most this many times the shorter one. Every image is resized so that its shorter
# side becomes the model's `resize` (256 px for ImageNet models), so the resized image holds resize^2 x ratio
# pixels: a 400000 x 1 PNG (about 1 KB, well under any pixel limit) would become 256 x 102,400,000 pixels,
# ~78 GB of RGB. At 100:1 the worst case is 256 x 25,600 (20 MB), and at 1024 px 1024 x 102,400 (300 MB).
# Generous on purpose: 360-degree panoramas are about 6:1 to 10:1 and stitched strips rarely pass 30:1; past
# 100:1 the centre crop the model sees is under 1% of the image, so the image is not a photo of anything.
MAX_ASPECT_RATIO = 100


def check_shape(width: int, height: int, resize: int | None = None) -> None:
    """Refuse, from the header size alone (before decoding), an image that resizing would blow up.

    Raises BadShape (an UnreadableImage) with the size, the limit and, given `resize`, what resizing its
    shorter side to `resize` pixels would have produced."""
    short, long = min(width, height), max(width, height)
    if short < 1:
        raise BadShape(f"image is {width} x {height} pixels: it has no pixels")
    ratio = long / short
    if ratio <= MAX_ASPECT_RATIO:
        return
    shown = f"{ratio:,.0f}" if ratio >= 1000 else f"{ratio:.1f}"
    msg = (
        f"image is {width:,} x {height:,} pixels, an aspect ratio of {shown}:1, over the limit of {MAX_ASPECT_RATIO}:1"
    )
    if resize is not None:
        w, h = _resized(width, height, resize)
        msg += f" (resizing its shorter side to {resize} px would make it {w:,} x {h:,} pixels)"
    raise BadShape(msg + "; crop it closer to square")


def to_rgb(im: Image.Image) -> Image.Image:
    # exif_transpose copies an image that needs no turning: call it only when the orientation tag asks for a
    # turn or a flip (the saving per JPEG: docs/benchmarks.md).
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


def draft_for(im: Image.Image, resize: int) -> None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when the result still covers `resize` pixels on the
    shorter side (far fewer pixels to decode for a large photo: docs/benchmarks.md); other formats are left as
    they are. Before `im.load()`: the Pillow side of `decode_image` (data/jpeg.py decodes at the same scale)."""
    if im.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with extra frames; the first is the photo
        w, h = im.size
        s = resize / min(w, h)
        im.draft("RGB", (max(1, int(w * s)), max(1, int(h * s))))


def decode_jpeg(data: bytes, header: jpeg.Header, resize: int | None) -> Image.Image | None:
    """The JPEG `data` (its `jpeg.read_header`) decoded by libjpeg-turbo (data/jpeg.py) at the scale Pillow's
    draft would use for `resize`, upright and RGB: the image `decode_image` gives, pixel for pixel; None where
    libjpeg-turbo refuses the file (the caller decodes it with Pillow). The caller has checked the header."""
    pixels = jpeg.decode(data, header, resize)
    if pixels is None:
        return None
    im = Image.fromarray(pixels)  # RGB, wrapping the array: no copy
    turn = _TURNS.get(header.orientation)
    return im if turn is None else im.transpose(turn)


def decode_image(source, resize: int | None = None, *, check, formats=None) -> Image.Image:
    """One image file (a path) or its bytes -> the whole image, decoded, upright and RGB; with `resize`, a JPEG
    is decoded at the reduced scale that still covers `resize` px on the shorter side. The one decoder of every
    path (files here, the server's uploads in serve/decode.py): libjpeg-turbo through simplejpeg for the JPEGs it
    takes (data/jpeg.py), Pillow for the rest and whenever simplejpeg is absent or refuses a file, both giving
    the same pixels.

    `check(width, height)`: called with the stored size from the header, before a pixel is decoded (the pixel
    limit and `check_shape`; it raises to refuse). `formats`: the Pillow formats accepted (None: any).
    Raises what Pillow and `check` raise."""
    data = _jpeg_bytes(source) if formats is None or "JPEG" in formats else None
    header = None if data is None else jpeg.read_header(data)
    if header is not None:
        check(header.width, header.height)
        im = decode_jpeg(data, header, resize)
        if im is not None:
            return im
    opened = io.BytesIO(data) if data is not None else io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(opened, formats=formats) as im:
        check(*im.size)
        if resize is not None:
            draft_for(im, resize)
        im.load()
        return to_rgb(im)


def _jpeg_bytes(source) -> bytes | None:
    """The file's bytes when it begins as a JPEG does and simplejpeg can decode it; else None (Pillow reads it)."""
    if not jpeg.available():
        return None
    if isinstance(source, bytes):
        return source if source.startswith(jpeg.SIGNATURE) else None
    with open(source, "rb") as f:
        head = f.read(len(jpeg.SIGNATURE))
        return head + f.read() if head == jpeg.SIGNATURE else None


def load_image(path: str, *, resize: int | None = None, interpolation: str = "bilinear") -> Image.Image:
    """Decode `path` as RGB (`decode_image`). With `resize`, the shorter side becomes `resize` pixels
    (`interpolation`, one of INTERPOLATIONS; antialiased).

    Raises UnreadableImage with a short reason (zero-byte, truncated, not an image, ...).
    """

    def check(w: int, h: int) -> None:  # from the header, before a pixel is decoded
        check_pixels(w, h)
        check_shape(w, h, resize)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette chatter; real failures raise
            im = decode_image(str(path), resize, check=check)
    except UnreadableImage:
        raise
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
    except Exception as e:
        raise UnreadableImage(f"cannot decode ({type(e).__name__}: {e})") from None
    if resize is not None:
        im = resize_shorter(im, resize, interpolation)
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


def resize_shorter(im: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """The shorter side becomes `size` pixels, resampled with `interpolation` (one of INTERPOLATIONS). Raises
    BadShape for an image `check_shape` refuses (files are refused before decoding; this covers images handed
    over in memory)."""
    w, h = im.size
    check_shape(w, h, size)
    if min(w, h) == size:
        return im
    return im.resize(_resized(w, h, size), INTERPOLATIONS[interpolation], reducing_gap=None)


def _resized(w: int, h: int, size: int) -> tuple[int, int]:
    if w <= h:
        return size, max(1, round(h * size / w))
    return max(1, round(w * size / h)), size


def pil_to_uint8(im: Image.Image):
    """RGB PIL image -> 3 x H x W uint8 tensor."""
    import torch  # noqa: PLC0415 - heavy: imgclf-serve and `imgclf check` use this module without torch

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def array_to_uint8(a: np.ndarray, *, resize: int | None = None, interpolation: str = "bilinear"):
    """H x W x 3 uint8 array (in-memory datasets) -> 3 x H' x W' uint8 tensor, resized like files are."""
    import torch  # noqa: PLC0415 - heavy: imgclf-serve and `imgclf check` use this module without torch

    if resize is not None and min(a.shape[:2]) != resize:
        return pil_to_uint8(resize_shorter(Image.fromarray(a), resize, interpolation))
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()


def center_crop(x, size: int, *, channels_last: bool = False):
    """The size x size centre crop torchvision's CenterCrop takes, for every path that crops (the per-image
    transforms, the decoded cache, whole batches, the server's decode threads): the window starts at
    round((side - size) / 2), and a side shorter than `size` is first padded with zeros as torchvision pads it.

    `x`: a numpy array or a torch tensor, ... x H x W (channels first, any leading dimensions), or H x W x C
    with `channels_last`. Only slicing (a view) unless padding is needed: numpy stays numpy, so a decode
    thread never runs a PyTorch operation (which would start an OpenMP team of its own)."""
    hd, wd = (0, 1) if channels_last else (x.ndim - 2, x.ndim - 1)
    h, w = x.shape[hd], x.shape[wd]
    if h < size or w < size:
        x = _pad_to(x, size, hd, wd)
        h, w = x.shape[hd], x.shape[wd]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    window = [slice(None)] * x.ndim
    window[hd], window[wd] = slice(top, top + size), slice(left, left + size)
    return x[tuple(window)]


def _pad_to(x, size: int, hd: int, wd: int):
    """Zeros around `x` until both sides are at least `size`: torchvision's CenterCrop padding (the extra pixel
    of an odd difference goes after)."""
    dh, dw = max(0, size - x.shape[hd]), max(0, size - x.shape[wd])
    pads = [(0, 0)] * x.ndim
    pads[hd], pads[wd] = (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)
    if isinstance(x, np.ndarray):
        return np.pad(x, pads)
    import torch.nn.functional as F  # noqa: PLC0415 - heavy: a tensor is padded only where torch is loaded

    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last dimension first
    return F.pad(x, flat)


def normalize_batch(images: list[np.ndarray], mean, std) -> np.ndarray:
    """N decoded images (uint8 S x S x 3 each) -> float32 N x 3 x S x S, C-contiguous: the model's input (the
    server's ONNX path, and `Predictor`'s batches: a fraction of the CPU of `eval_transform` on the batch).

    The arithmetic of `eval_transform` in float32, in its order: x * (1/255) (torchvision's ToDtype(scale=True)),
    then (x - mean) / std (its Normalize)."""
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32, order="C")  # one copy, in NCHW order
    x *= np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return x
