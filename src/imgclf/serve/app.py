"""The HTTP service: `create_app(runner_or_path, settings)` -> a FastAPI app.

Checks up front, then decode, batch, predict, encode:

1. the guard (outermost, pure ASGI): API key, then per-path metrics for every answer, errors included;
2. /predict: content type and Content-Length checked before the body is read; the multipart body is parsed as
   it arrives while its bytes are counted (never more than `max_upload_mb` is read); every file is decoded in
   a thread pool, with the pixel count checked from the header first; the decoded images go to the dynamic
   batcher; the whole request runs under `timeout_s`. Below `min_confidence` (the server's default or the
   request's) a prediction answers "unsure", by `confidence.mark_unsure`, the rule of `imgclf predict`.
   /explain (a checkpoint only): the same upload checks for one image, then Grad-CAM (`explain.Explainer`, made
   once at start-up by `model.open_explainer`) in a thread of its own, answering the overlay as a PNG.
3. The model: `model.open_served` picks it. A `.onnx` export runs in onnxruntime with NumPy preprocessing and
   this module never imports torch (the slim install, `imgclf-serve`); anything else goes through a PyTorch
   Runner. The endpoints only see `probabilities(images)` and the Runner's descriptive attributes.
4. Every refusal is JSON: {"error": CODE, "detail": "what is wrong and how to fix it"}. A client's input gives
   a 4xx; 5xx are kept for the server's own trouble (503 overloaded or still warming up, 504 too slow,
   500 a bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imgclf.core.confidence import check_min_confidence, mark_unsure
from imgclf.core.errors import UsageError
from imgclf.serve.batcher import DynamicBatcher, Overloaded
from imgclf.serve.decode import IMAGE_FORMATS, ImageRejected, decode_upload, open_upload
from imgclf.serve.metrics import Metrics
from imgclf.serve.model import OVERLAY_MAX_SIDE, open_explainer, open_served
from imgclf.serve.server import trim_malloc

log = logging.getLogger(__name__)

# How often the model thread hands freed heap memory back to the kernel (glibc malloc_trim), seconds. Batches of
# every size from 1 to max_batch_size leave holes in malloc's heaps that are reused but never returned. Measured
# over 10,000 requests after warm-up (EfficientNet-Lite0 int8, 32 clients): resident memory +2.9% without it,
# +0.9% with it, at the same speed.
TRIM_EVERY_S = 5.0

# Paths that need the API key when one is set. /, /health, /ready and the OpenAPI docs stay open: a load
# balancer probes health without secrets, and the page and docs hold nothing but code.
PROTECTED = ("/predict", "/explain", "/metadata", "/metrics")


@dataclass
class ServeSettings:
    """Every limit of the service, with the CLI's defaults."""

    max_batch_size: int = 32  # images per model batch
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_upload_mb: float = 10.0  # request body, MiB
    max_pixels: int = 40_000_000  # per image, from its header, before decoding
    max_files: int = 64  # images per request
    timeout_s: float = 30.0  # whole request: upload, decode, queue, model
    api_key: str | None = None  # when set: Authorization: Bearer KEY, or X-API-Key: KEY
    top_k: int = 5  # default labels per image (clamped to the class count)
    decode_workers: int | None = None  # decode threads (default: the CPU count, at most 4)
    max_queue: int = 1024  # images waiting for the model before the server answers 503
    warmup: bool = True  # run the model on dummy batches before /ready says yes
    device: str = "auto"  # used when create_app opens a path itself
    precision: str = "auto"
    threads: int | None = None  # onnxruntime intra-op threads for a .onnx path (None: see onnx_model.default_threads)
    min_confidence: float | None = None  # default threshold under which a prediction is "unsure" (confidence.py)
    explain: bool = True  # load a second copy of a checkpoint's model for Grad-CAM (/explain); exports never

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> ServeSettings:
        def need(ok, msg):
            if not ok:
                raise UsageError(msg)

        need(1 <= self.max_batch_size <= 4096, f"--max-batch-size must be 1..4096, got {self.max_batch_size}")
        need(0 <= self.max_wait_ms <= 10_000, f"--max-wait-ms must be 0..10000, got {self.max_wait_ms}")
        need(self.max_upload_mb > 0, f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        need(self.max_pixels >= 1, f"--max-pixels must be positive, got {self.max_pixels}")
        need(self.max_files >= 1, f"--max-files must be at least 1, got {self.max_files}")
        need(self.timeout_s > 0, f"--timeout must be positive, got {self.timeout_s}")
        need(self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}")
        need(
            self.decode_workers is None or self.decode_workers >= 1,
            f"--decode-workers must be at least 1, got {self.decode_workers}",
        )
        need(self.max_queue >= self.max_files, f"--max-queue must be at least --max-files ({self.max_files})")
        need(self.api_key is None or self.api_key.strip() != "", "--api-key is empty: give a key or leave it out")
        need(self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}")
        self.min_confidence = check_min_confidence(self.min_confidence)  # a UsageError naming --min-confidence
        return self


class ApiError(Exception):
    """A refusal with its status, a machine-readable code and a sentence for the human."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra


class UploadTooLarge(Exception):
    pass


def error_response(status: int, code: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


# --- response schemas, for the OpenAPI docs (responses are built by hand, not validated per request) ---


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    filename: str | None
    label: str | None  # None when unsure
    index: int
    probability: float
    top_k: list[LabelProbability]
    unsure: bool | None = None  # only with a min_confidence: the top probability is below it


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    error: str
    detail: str


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files ("
                            + ", ".join(IMAGE_FORMATS)
                            + "); repeat the field",
                        },
                        "top_k": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "labels per image (overrides the query)",
                        },
                        "min_confidence": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 1,
                            "description": "answer 'unsure' below this top probability (overrides the query)",
                        },
                    },
                }
            }
        },
    }
}

ERRORS = {
    400: {
        "model": ErrorBody,
        "description": "malformed request: no 'image' field, a text instead of a file, too many files, bad multipart",
    },
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    408: {"model": ErrorBody, "description": "the upload did not arrive within the request timeout"},
    413: {"model": ErrorBody, "description": "body over the upload limit, or an image over the pixel limit"},
    415: {"model": ErrorBody, "description": "not multipart/form-data"},
    422: {
        "model": ErrorBody,
        "description": "a file that is not a readable image (empty, truncated, unknown "
        "format), an image too far from square (aspect ratio over 100:1), "
        "or a bad top_k or min_confidence",
    },
    503: {"model": ErrorBody, "description": "overloaded, or the model is still warming up"},
    504: {"model": ErrorBody, "description": "the prediction did not finish within the request timeout"},
}

EXPLAIN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "one image file"},
                        "target": {
                            "type": "string",
                            "description": "the class label to explain (overrides the query; default: the predicted one)",
                        },
                    },
                }
            }
        },
    }
}

EXPLAIN_ERRORS = {
    200: {
        "content": {"image/png": {}},
        "description": "the image with its Grad-CAM heat map drawn over it (longer side at most "
        f"{OVERLAY_MAX_SIDE} px); the X-Explanation header holds the prediction and the class explained as JSON",
    },
    **{k: v for k, v in ERRORS.items() if k != 422},
    400: {
        "model": ErrorBody,
        "description": "explanations are not available (an exported model gives no gradients: serve the "
        "checkpoint), or a malformed request: no 'image' field, more than one file, bad multipart",
    },
    422: {
        "model": ErrorBody,
        "description": "not a readable image, an image too far from square, or an unknown target",
    },
}


class ServerState:
    """What the endpoints share: the model, the limits, the pools, the batcher and the metrics.

    `runner`: what create_app was given or opened; `model`: the same with `probabilities` (see model.py)."""

    def __init__(self, runner, model, settings: ServeSettings, explainer=None, explain_info: dict | None = None):
        self.runner = runner
        self.model = model
        self.settings = settings
        self.explainer = explainer  # explain.Explainer for a checkpoint, else None (see model.open_explainer)
        self.explain_info = explain_info or {"available": False, "reason": "no explainer"}
        self.explain_pool: ThreadPoolExecutor | None = None
        self.classes = list(model.classes)
        self.preprocess = model.preprocess
        self.metrics = Metrics(settings.max_batch_size)
        self.decode_workers = settings.decode_workers or max(1, min(4, os.cpu_count() or 1))
        self.decode_pool: ThreadPoolExecutor | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.not_ready_reason = "starting"
        self._last_trim = time.monotonic()

    # -- the model thread --
    def predict_batch(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 images (S x S x 3 each) -> float32 N x C probabilities."""
        probs = self.model.probabilities(images)
        now = time.monotonic()
        if now - self._last_trim > TRIM_EVERY_S:
            self._last_trim = now
            trim_malloc()
        return probs

    def on_batch(self, n: int, seconds: float) -> None:
        self.metrics.batch_size.observe(n)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.images.inc(n)

    async def start(self) -> None:
        s = self.settings
        self.decode_pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="imgclf-decode")
        if self.explainer is not None:
            # one thread: one explanation at a time holds a full-size image and its map (the Explainer's lock
            # would serialise them anyway), and requests waiting their turn hold only their bytes
            self.explain_pool = ThreadPoolExecutor(1, thread_name_prefix="imgclf-explain")
        self.batcher = DynamicBatcher(
            self.predict_batch,
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_queue=s.max_queue,
            on_batch=self.on_batch,
        )
        self.batcher.start()

    async def warm_up(self) -> None:
        """First calls are slow (allocations, kernel selection): make them before /ready says yes."""
        self.not_ready_reason = "warming up the model"
        try:
            if self.settings.warmup:
                size = self.preprocess.img_size
                for n in warmup_sizes(self.settings.max_batch_size):
                    dummy = [np.zeros((size, size, 3), dtype=np.uint8)] * n
                    await self.batcher.run_model(self.predict_batch, dummy)
        except Exception as e:
            log.exception("warm-up failed")
            self.not_ready_reason = f"warm-up failed: {type(e).__name__}: {e}"
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("model warmed up, ready")

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        for pool in (self.decode_pool, self.explain_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    # -- the upload, shared by /predict and /explain --
    def check_upload_headers(self, request: Request) -> None:
        """Content type and Content-Length, before any of the body is read."""
        s = self.settings
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

    async def within_timeout(self, work, phase: list, what: str):
        """`work` (a coroutine that moves phase[0] from "upload" on) under the request timeout: 408 while the
        upload is still arriving, 504 after."""
        s = self.settings
        try:
            return await asyncio.wait_for(work, s.timeout_s)
        except asyncio.TimeoutError:
            if phase[0] == "upload":
                raise ApiError(
                    408, "upload_timeout", f"the upload did not arrive within the request timeout of {s.timeout_s:g} s"
                ) from None
            raise ApiError(
                504,
                "timeout",
                f"{what} did not finish within the request timeout of {s.timeout_s:g} s (the server is busy); try again",
            ) from None

    # -- /predict --
    async def handle_predict(self, request: Request, top_k: int | None, min_confidence: str | None) -> JSONResponse:
        threshold = parse_min_confidence(min_confidence) if min_confidence is not None else self.settings.min_confidence
        self.check_upload_headers(request)
        phase = ["upload"]
        return await self.within_timeout(self._predict(request, top_k, threshold, phase), phase, "the prediction")

    async def _body(self, request: Request):
        """The request body as it arrives, refusing to read past the upload limit."""
        limit, seen = self.settings.max_upload_bytes, 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise UploadTooLarge()
            yield chunk

    async def _read_form(self, request: Request, max_files: int):
        s = self.settings
        parser = MultiPartParser(
            request.headers, self._body(request), max_files=max_files, max_fields=8, max_part_size=1024
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
            msg = e.message
            if msg.startswith("Too many files"):
                at_most = (
                    f"at most {s.max_files} images per request (--max-files)"
                    if max_files == s.max_files
                    else f"{request.url.path} takes {max_files} image per request"
                )
                raise ApiError(400, "too_many_files", f"too many files: {at_most}") from None
            if msg.startswith("Too many fields"):
                raise ApiError(
                    400,
                    "too_many_fields",
                    "too many form fields: send files in 'image' and at most the optional fields "
                    "(top_k and min_confidence for /predict, target for /explain)",
                ) from None
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {msg}") from None
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "the client closed the connection during the upload") from None
        except (ValueError, KeyError, UnicodeError, AssertionError) as e:
            # Bad headers inside the body (python-multipart and Starlette raise these for some malformations).
            raise ApiError(400, "bad_multipart", f"malformed multipart body ({type(e).__name__})") from None

    async def _upload(self, request: Request, fields: dict, max_files: int) -> tuple[list, list, dict]:
        """(file names, file bytes, {field: parsed value}) of the multipart body: files in 'image', and the text
        fields named in `fields`, each parsed by its function (which raises ApiError) as it arrives."""
        form = await self._read_form(request, max_files)
        files, values = [], {}
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
                    values[name] = fields[name](value)
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
            names = [f.filename for f in files]
            datas = [await f.read() for f in files]
        finally:
            await form.close()
        return names, datas, values

    async def _predict(self, request: Request, top_k: int | None, threshold: float | None, phase: list) -> JSONResponse:
        s = self.settings
        names, datas, values = await self._upload(
            request, {"top_k": parse_top_k, "min_confidence": parse_min_confidence}, s.max_files
        )
        top_k = values.get("top_k", top_k)
        threshold = values.get("min_confidence", threshold)
        phase[0] = "decode"
        loop = asyncio.get_running_loop()
        decode = functools.partial(decode_upload, preprocess=self.preprocess, max_pixels=s.max_pixels)
        results = await asyncio.gather(
            *[loop.run_in_executor(self.decode_pool, decode, d) for d in datas], return_exceptions=True
        )
        del datas
        for i, r in enumerate(results):
            if isinstance(r, ImageRejected):
                self.metrics.rejected.labels(r.code).inc()
                where = f"image {i + 1} of {len(results)}" + (f" ('{names[i][:80]}')" if names[i] else "")
                raise ApiError(r.status, r.code, f"{where}: {r}", index=i, filename=names[i])
            if isinstance(r, BaseException):
                raise r
        phase[0] = "model"
        try:
            probs = await self.batcher.submit(results)
        except Overloaded as e:
            raise ApiError(
                503, "overloaded", f"the server is overloaded ({e}); retry shortly", headers={"Retry-After": "1"}
            ) from None
        k = max(1, min(top_k or s.top_k, len(self.classes)))
        return JSONResponse(
            {"predictions": [encode_prediction(n, p, self.classes, k, threshold) for n, p in zip(names, probs)]}
        )

    # -- /explain --
    async def handle_explain(self, request: Request, target: str | None) -> Response:
        if self.explainer is None:
            raise ApiError(400, "explain_unavailable", self.explain_info["reason"])
        if target is not None:
            self.check_target(target)
        self.check_upload_headers(request)
        phase = ["upload"]
        return await self.within_timeout(self._explain(request, target, phase), phase, "the explanation")

    def check_target(self, label: str) -> str:
        try:
            self.explainer.class_index(label)
        except UsageError as e:
            raise ApiError(422, "unknown_target", str(e)) from None
        return label

    async def _explain(self, request: Request, target: str | None, phase: list) -> Response:
        names, datas, values = await self._upload(request, {"target": self.check_target}, max_files=1)
        target = values.get("target", target)
        phase[0] = "model"
        loop = asyncio.get_running_loop()
        try:
            png, info = await loop.run_in_executor(self.explain_pool, self._explain_one, datas[0], target)
        except ImageRejected as r:
            self.metrics.rejected.labels(r.code).inc()
            where = f" ('{names[0][:80]}')" if names[0] else ""
            raise ApiError(r.status, r.code, f"the image{where}: {r}", filename=names[0]) from None
        except MemoryError:  # the server's trouble, as an overloaded queue: never a 500
            raise ApiError(
                503,
                "overloaded",
                "the server ran out of memory explaining this image; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        info = mark_unsure({k: v for k, v in info.items() if k != "path"}, self.settings.min_confidence)
        # ensure_ascii: a header is Latin-1, and a class name may be anything
        return Response(png, media_type="image/png", headers={"X-Explanation": json.dumps(info, ensure_ascii=True)})

    def _explain_one(self, data: bytes, target: str | None) -> tuple[bytes, dict]:
        """In the explain thread: decode with the upload checks, then Grad-CAM and the overlay (PNG bytes)."""
        image = open_upload(data, resize=self.preprocess.resize, max_pixels=self.settings.max_pixels)
        try:
            return self.explainer.overlay_png(image, target, max_side=OVERLAY_MAX_SIDE)
        except UsageError as e:  # an image Pillow opened but the explainer could not process
            raise ImageRejected("unreadable_image", str(e)) from None


def encode_prediction(
    filename: str | None, probs: np.ndarray, classes: list[str], k: int, min_confidence: float | None = None
) -> dict:
    """One image's answer: its most probable label and the k best (label, probability), best first (ties: the
    lower class index first); "unsure" below `min_confidence` (confidence.mark_unsure, as `imgclf predict`)."""
    idx = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")[:k].tolist()
    vals = [float(probs[i]) for i in idx]
    answer = {
        "filename": filename,
        "label": classes[idx[0]],
        "index": idx[0],
        "probability": vals[0],
        "top_k": [{"label": classes[i], "probability": v} for v, i in zip(vals, idx)],
    }
    return mark_unsure(answer, min_confidence)


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Batch sizes to run before /ready: the largest first (so allocators size their first block for it), then
    a spread of the others in a mixed order, the way concurrent traffic arrives."""
    m = max_batch_size
    mixed = [1, m // 2 + 1, m, m // 4 + 1, (3 * m) // 4 + 1, m, 2, m // 8 + 1, m]
    return [m] + [n for n in mixed if 1 <= n <= m]


def parse_min_confidence(value: str) -> float:
    try:
        return check_min_confidence(value.strip(), "min_confidence")
    except UsageError as e:
        raise ApiError(422, "invalid_min_confidence", str(e)) from None


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


class Guard:
    """Pure ASGI middleware: the API key check and the request metrics, for every response (errors too)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state
        key = state.settings.api_key
        self.key = key.encode() if key else None

    def authorised(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"x-api-key":
                if hmac.compare_digest(value.strip(), self.key):
                    return True
            elif name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
                    return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope.get("path", "")
        try:
            if self.key is not None and path in PROTECTED and not self.authorised(scope):
                resp = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await resp(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.state.metrics.observe_request(path, scope.get("method", ""), status[0], time.perf_counter() - t0)


def _page() -> str:
    return resources.files("imgclf.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(runner_or_path, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving `runner_or_path`: a Runner from `runtime.open_model`, or a path (a `.onnx` export is
    opened without torch, anything else with `runtime.open_model`; see model.open_served).

    The model is warmed up in the background after startup; /ready answers 200 once it is done."""
    settings = (settings or ServeSettings()).check()
    runner, model = open_served(runner_or_path, settings)
    explainer, explain_info = open_explainer(runner, settings)
    state = ServerState(runner, model, settings, explainer, explain_info)
    page = _page()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.start()
        warm = asyncio.get_running_loop().create_task(state.warm_up())
        try:
            yield
        finally:
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
            await state.stop()

    app = FastAPI(
        title="imgclf",
        version=_version(),
        lifespan=lifespan,
        description=f"Image classifier service: {runner.model_name} ({runner.format}), "
        f"{len(state.classes)} classes. Protected with an API key: "
        f"{'yes' if settings.api_key else 'no'} ({', '.join(PROTECTED)}).",
    )
    app.state.imgclf = state

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.code, e.detail, headers=e.headers, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body", "path", "header"))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
        return error_response(422, "invalid_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            e.status_code, codes.get(e.status_code, "http_error"), str(e.detail), headers=getattr(e, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):  # the server's own fault; logged with its traceback
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
        return error_response(500, "internal_error", "internal server error (logged on the server)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/health", summary="The process is alive")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded and warmed up", responses={503: {"model": ErrorBody}})
    async def ready():
        if state.ready:
            return {"ready": True}
        return error_response(503, "not_ready", state.not_ready_reason, ready=False)

    @app.get("/metadata", summary="Model name, format, classes and preprocessing", responses={401: ERRORS[401]})
    async def metadata():
        meta = _without_paths(dict(runner.metadata()))  # file names, not the server's directory layout
        meta["file"] = os.path.basename(str(meta.pop("path", runner.path)))
        meta["serve"] = {
            k: v
            for k, v in asdict(settings).items()
            if k not in ("api_key", "device", "precision", "threads", "explain")
        }
        meta["serve"]["api_key_required"] = settings.api_key is not None
        meta["serve"]["formats"] = list(IMAGE_FORMATS)
        meta["explain"] = dict(state.explain_info)  # {"available": true, "method", "layer"} or {false, "reason"}
        return meta

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={401: ERRORS[401]})
    async def metrics():
        state.metrics.queue.set(state.batcher.waiting if state.batcher else 0)
        return Response(state.metrics.render(), media_type=Metrics.CONTENT_TYPE)

    @app.post(
        "/predict",
        summary="Classify one or more uploaded images",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
    )
    async def predict(
        request: Request,
        top_k: int | None = Query(
            None, ge=1, description=f"labels per image (default {settings.top_k}; clamped to the class count)"
        ),
        min_confidence: str | None = Query(
            None,
            description="a probability in (0, 1]: a prediction whose top probability is below it answers "
            '"unsure": true and "label": null (index, probability and top_k still show the top class); '
            f"default {settings.min_confidence} (--min-confidence)",
        ),
    ):
        if state.batcher is None:
            raise ApiError(503, "not_ready", "the server is starting")
        return await state.handle_predict(request, top_k, min_confidence)

    @app.post(
        "/explain",
        summary="Where the model looks: a Grad-CAM overlay (PNG) of one uploaded image, for a checkpoint",
        response_class=Response,
        responses=EXPLAIN_ERRORS,
        openapi_extra=EXPLAIN_BODY,
    )
    async def explain(
        request: Request,
        target: str | None = Query(None, description="the class label to explain (default: the predicted one)"),
    ):
        if state.batcher is None:
            raise ApiError(503, "not_ready", "the server is starting")
        return await state.handle_explain(request, target)

    app.add_middleware(Guard, state=state)
    return app


def _without_paths(obj):
    """A copy of `obj` with absolute file paths (in any nested value) cut to their file names."""
    if isinstance(obj, dict):
        return {k: _without_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_without_paths(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and len(obj) > 1:
        return os.path.basename(obj)
    return obj


def _version() -> str:
    from imgclf.core.version import __version__

    return __version__
