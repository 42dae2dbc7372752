"""A request's upload, shared by /predict and /explain, within the server's limits.

Content type and Content-Length are checked before the body is read; the multipart body is parsed as it arrives
while its bytes are counted (never more than `max_upload_mb` is read); the whole request runs under `timeout_s`,
answered 408 while the upload is still arriving and 504 after. Every refusal is an ApiError.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imgclf.core.confidence import check_min_confidence
from imgclf.core.errors import UsageError
from imgclf.serve.responses import ApiError
from imgclf.serve.settings import ServeSettings


@dataclass
class Phase:
    """Where a request is, for the answer when its time runs out: "upload" while its body arrives (408), then
    "decode" and "model" (504: the server was too slow)."""

    name: str = "upload"


@dataclass
class Upload:
    """A multipart body read: the files of the field 'image' (their names and bytes, in order) and the text
    fields asked for, each parsed."""

    names: list = field(default_factory=list)
    datas: list = field(default_factory=list)
    values: dict = field(default_factory=dict)


class UploadTooLarge(Exception):
    pass


def check_upload_headers(request: Request, s: ServeSettings) -> None:
    """Content type and Content-Length, before any of the body is read."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with the images in the field 'image' (got "
            f"'{ctype[:60] or 'no Content-Type'}'); e.g. curl -F image=@photo.jpg URL{request.url.path}",
        )
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad_content_length", f"Content-Length '{length[:40]}' is not a number") from None
        if n > s.max_upload_bytes:
            raise ApiError(
                413,
                "upload_too_large",
                f"the upload is {n:,} bytes, more than the limit of {s.max_upload_bytes:,} "
                f"(--max-upload-mb {s.max_upload_mb:g})",
            )


async def within_timeout(work, phase: Phase, what: str, s: ServeSettings):
    """`work` (a coroutine that moves `phase` on from "upload") under the request timeout: 408 while the upload is
    still arriving, 504 after."""
    try:
        return await asyncio.wait_for(work, s.timeout_s)
    except asyncio.TimeoutError:
        if phase.name == "upload":
            raise ApiError(
                408, "upload_timeout", f"the upload did not arrive within the request timeout of {s.timeout_s:g} s"
            ) from None
        raise ApiError(
            504,
            "timeout",
            f"{what} did not finish within the request timeout of {s.timeout_s:g} s (the server is busy); try again",
        ) from None


async def body(request: Request, limit: int):
    """The request body as it arrives, refusing to read past `limit` bytes."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise UploadTooLarge()
        yield chunk


async def read_form(request: Request, s: ServeSettings, max_files: int):
    parser = MultiPartParser(
        request.headers, body(request, s.max_upload_bytes), max_files=max_files, max_fields=8, max_part_size=1024
    )
    try:
        return await parser.parse()
    except UploadTooLarge:
        raise ApiError(
            413,
            "upload_too_large",
            f"the upload is larger than the limit of "
            f"{s.max_upload_bytes:,} bytes (--max-upload-mb {s.max_upload_mb:g})",
        ) from None
    except MultiPartException as e:
        raise multipart_refusal(e.message, request, s, max_files) from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection during the upload") from None
    except (ValueError, KeyError, UnicodeError, AssertionError) as e:
        # Bad headers inside the body (python-multipart and Starlette raise these for some malformations).
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({type(e).__name__})") from None


def multipart_refusal(msg: str, request: Request, s: ServeSettings, max_files: int) -> ApiError:
    """The 400 for Starlette's multipart complaint `msg`: too many files or fields, or a malformed body."""
    if msg.startswith("Too many files"):
        at_most = (
            f"at most {s.max_files} images per request (--max-files)"
            if max_files == s.max_files
            else f"{request.url.path} takes {max_files} image per request"
        )
        return ApiError(400, "too_many_files", f"too many files: {at_most}")
    if msg.startswith("Too many fields"):
        return ApiError(
            400,
            "too_many_fields",
            "too many form fields: send files in 'image' and at most the optional fields "
            "(top_k, min_confidence, reject and ood_score for /predict, target for /explain)",
        )
    return ApiError(400, "bad_multipart", f"malformed multipart body: {msg}")


async def read_upload(request: Request, s: ServeSettings, fields: dict, max_files: int) -> Upload:
    """The multipart body: files in 'image', and the text fields named in `fields`, each parsed by its function
    (which raises ApiError) as it arrives."""
    form = await read_form(request, s, max_files)
    files, up = [], Upload()
    try:
        for name, value in form.multi_items():
            if name == "image":
                if isinstance(value, str):
                    raise ApiError(
                        400,
                        "not_a_file",
                        "the field 'image' holds text, not a file: upload the "
                        "image as a file (curl -F image=@photo.jpg)",
                    )
                files.append(value)
            elif name in fields:
                if not isinstance(value, str):
                    raise ApiError(422, f"invalid_{name}", f"{name} must be a form value, not a file")
                up.values[name] = fields[name](value)
            else:
                optional = " or ".join(f"'{f}'" for f in fields)
                raise ApiError(
                    400,
                    "unexpected_field",
                    f"unexpected form field '{name[:40]}': send the images in "
                    f"'image' (repeat it for several) and optionally {optional}",
                )
        if not files:
            raise ApiError(
                400,
                "missing_image",
                "no image: send one or more files in the multipart field 'image' (curl -F image=@photo.jpg)",
            )
        up.names = [f.filename for f in files]
        up.datas = [await f.read() for f in files]
    finally:
        await form.close()
    return up


def parse_min_confidence(value: str) -> float:
    try:
        return check_min_confidence(value.strip(), "min_confidence")
    except UsageError as e:
        raise ApiError(422, "invalid_min_confidence", str(e)) from None


def parse_text(value: str) -> str:
    """A text field (reject, ood_score) as sent, less surrounding spaces: its endpoint checks the value."""
    return value.strip()


def parse_top_k(value: str) -> int:
    try:
        k = int(value.strip())
    except ValueError:
        raise ApiError(
            422, "invalid_top_k", f"top_k must be a whole number of at least 1, got '{value[:20]}'"
        ) from None
    if k < 1:
        raise ApiError(422, "invalid_top_k", f"top_k must be at least 1, got {k}")
    return k
