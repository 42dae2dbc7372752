"""What the service answers: a refusal (`ApiError`) as JSON {"error": CODE, "detail": "..."}, the handlers that
turn every exception into one (a client's input gives a 4xx; 5xx are kept for the server's own trouble), and one
image's prediction (`encode_prediction`)."""

from __future__ import annotations

import logging

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.core.confidence import mark_unsure, multilabel_result

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal with its status, a machine-readable code and a sentence for the human."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra


def error_response(status: int, code: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every exception an endpoint raises answered in JSON: ApiError as it says, FastAPI's parameter checks as
    422 invalid_parameter, Starlette's 404 and 405, and anything else as a logged 500 (a bug)."""

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


def encode_multilabel(filename: str | None, probs: np.ndarray, classes: list[str], thresholds: list[float]) -> dict:
    """One image's answer from a multi-label model: {"filename", "labels", "scores"}, by the rule `imgclf predict`
    uses (confidence.multilabel_result: the labels whose score reaches their threshold, and every label's score)."""
    return {"filename": filename, **multilabel_result(np.asarray(probs).tolist(), classes, thresholds)}
