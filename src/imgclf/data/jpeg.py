"""JPEGs decoded by libjpeg-turbo through simplejpeg: the same pixels as Pillow's decoder, with less work around it.

Pillow decodes a JPEG with libjpeg-turbo too, but through its generic file loop (the file read in blocks, the
decoder resumed for each); simplejpeg hands the whole file to libjpeg-turbo's TurboJPEG API in one call and
decodes straight into a NumPy array, with the GIL released. At the same scale, the same DCT (islow) and the same
chroma upsampling (fancy) as Pillow, the pixels are bit-for-bit Pillow's (tests/unit/data/test_jpeg.py), so the
size, the pixels and a model's accuracy do not depend on which decoder ran.

`read_header` is the cheap part (no pixel decoded): size, colour space and EXIF orientation, read by walking the
JPEG's markers up to the image data. It answers None for anything this path leaves to Pillow: simplejpeg not
installed, not a JPEG, CMYK/YCCK (Pillow's own conversion to RGB), an EXIF block it cannot read with certainty,
an orientation given only in XMP. `decode` answers None when libjpeg-turbo refuses or warns (a corrupt or
truncated file, a 12-bit JPEG): the caller then decodes with Pillow, which gives the image or the error exactly
as before, so nothing decodes differently or fails differently because this path exists.

Torch-free: the slim server (imgclf-serve) decodes through this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

try:  # optional: without it every image is decoded by Pillow, which gives the same pixels, more slowly
    import simplejpeg
except ImportError:  # pragma: no cover - exercised by monkeypatching `simplejpeg` to None in the tests
    simplejpeg = None

SIGNATURE = b"\xff\xd8\xff"  # SOI and the first marker's 0xFF: how every JPEG file begins
_EXIF, _XMP = b"Exif\x00\x00", b"http://ns.adobe.com/xap/1.0/"
_ORIENTATION = 0x0112
_COLOURS = frozenset(("YCbCr", "Gray", "RGB"))  # colour spaces libjpeg-turbo turns into RGB as Pillow does
_SOS = 0xDA
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD9)))  # TEM, RSTn, SOI: markers without a length


def available() -> bool:
    return simplejpeg is not None


@dataclass(frozen=True)
class Header:
    """A JPEG's header as stored (`width` x `height` before the EXIF orientation is applied)."""

    width: int
    height: int
    orientation: int  # EXIF orientation, 1 (upright) when the file has none


def read_header(data: bytes) -> Header | None:
    """The header of the JPEG `data`, or None where this path leaves the file to Pillow (see the module)."""
    if simplejpeg is None or not data.startswith(SIGNATURE):
        return None
    orientation = _orientation(data)
    if orientation is None:
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colour not in _COLOURS or width < 1 or height < 1:
        return None
    return Header(int(width), int(height), orientation)


def _orientation(data: bytes) -> int | None:
    """The EXIF orientation Pillow's `getexif` would find (its first APP1 Exif block; 1 when there is none), or
    None when it cannot be told here for certain: a malformed marker, an orientation of an unusual type, or no EXIF
    orientation but an XMP block (where Pillow looks next)."""
    pos, exif, xmp = 2, None, False
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == _SOS:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > n:
            return None
        if marker == 0xE1:
            segment = data[pos + 4 : pos + 2 + length]
            if segment.startswith(_EXIF):
                exif = segment if exif is None else exif
            elif segment.startswith(_XMP):
                xmp = True
        pos += 2 + length
    else:
        return None  # no image data: Pillow says what is wrong
    found = 0 if exif is None else _exif_orientation(exif[len(_EXIF) :])
    if found == 0 and xmp:  # no orientation in EXIF: Pillow would read XMP's
        return None
    return 1 if found == 0 else found


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation tag of IFD0 of a TIFF-structured EXIF block: its value, 0 when absent, None when unreadable."""
    if tiff[:4] == b"II*\x00":
        order = "<"
    elif tiff[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    (ifd,) = struct.unpack_from(order + "L", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            return None
        tag, kind, values = struct.unpack_from(order + "HHL", tiff, at)
        if tag == _ORIENTATION:
            if kind != 3 or values != 1:  # not one SHORT: Pillow's reading of it is Pillow's business
                return None
            return struct.unpack_from(order + "H", tiff, at + 8)[0]
    return 0


def draft_scale(width: int, height: int, resize: int | None) -> int:
    """The reduction (1, 2, 4 or 8) Pillow's `draft` picks for `data.images.draft_for(im, resize)`: the largest
    that still leaves `resize` pixels on the shorter side (the stored image's, before orientation)."""
    if resize is None:
        return 1
    s = resize / min(width, height)
    wanted = min(width // max(1, int(width * s)), height // max(1, int(height * s)))
    return next((f for f in (8, 4, 2) if wanted >= f), 1)


def decode(data: bytes, header: Header, resize: int | None) -> np.ndarray | None:
    """H x W x 3 uint8 RGB of the JPEG `data` at Pillow's draft scale for `resize` (full size for None), as
    stored (orientation not applied); None where libjpeg-turbo refuses it or warns (then Pillow decodes it)."""
    f = draft_scale(header.width, header.height, resize)
    try:
        # min_factor f with a size of at least 1/f of each side: exactly 1/f, the scale Pillow's draft uses
        return simplejpeg.decode_jpeg(
            data,
            "RGB",
            min_factor=f,
            min_width=-(-header.width // f),
            min_height=-(-header.height // f),
            strict=True,  # a recoverable error (corrupt data, a truncated file) goes to Pillow, which decides
        )
    except (ValueError, MemoryError):
        return None
