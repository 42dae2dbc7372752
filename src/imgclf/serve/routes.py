"""The service's routes: the web page, /health, /ready, /metadata and /metrics (`add_info_routes`), and /predict
and /explain (`add_model_routes`, whose work is in endpoints.py)."""

from __future__ import annotations

import os
from dataclasses import asdict
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response

from imgclf.serve.decode import IMAGE_FORMATS
from imgclf.serve.endpoints import handle_explain, handle_predict
from imgclf.serve.metrics import Metrics
from imgclf.serve.responses import ApiError, error_response
from imgclf.serve.schemas import ERRORS, EXPLAIN_BODY, EXPLAIN_ERRORS, PREDICT_BODY, ErrorBody, PredictResponse
from imgclf.serve.state import ServerState

# The web page's own headers: it runs its inline script and shows the images it is given, nothing from elsewhere,
# and no other site may frame it (it holds an API-key field; guard.SECURITY_HEADERS adds X-Frame-Options: DENY)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def page() -> str:
    return resources.files("imgclf.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def without_paths(obj):
    """A copy of `obj` with absolute file paths (in any nested value) cut to their file names."""
    if isinstance(obj, dict):
        return {k: without_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [without_paths(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and len(obj) > 1:
        return os.path.basename(obj)
    return obj


def served_metadata(state: ServerState) -> dict:
    """/metadata: the model's own (file names, not the server's directory layout), the server's limits (not its
    key, device or threads) and whether /explain is available."""
    runner, settings = state.runner, state.settings
    meta = without_paths(dict(runner.metadata()))
    meta["file"] = os.path.basename(str(meta.pop("path", runner.path)))
    meta["serve"] = {
        k: v for k, v in asdict(settings).items() if k not in ("api_key", "device", "precision", "threads", "explain")
    }
    meta["serve"]["api_key_required"] = settings.api_key is not None
    meta["serve"]["formats"] = list(IMAGE_FORMATS)
    if state.ood is not None or "ood" in meta:
        meta["ood"] = state.ood  # the record as served (a knn threshold only where the model gives the distance)
    meta["explain"] = dict(state.explain_info)  # {"available": true, "method", "layer"} or {false, "reason"}
    return meta


def add_info_routes(app: FastAPI, state: ServerState) -> None:
    html = page()

    # HEAD as GET, without the body (Starlette's own routes add HEAD to GET; FastAPI's need it named)
    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(html, headers=PAGE_HEADERS)

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
        return served_metadata(state)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={401: ERRORS[401]})
    async def metrics():
        state.metrics.queue.set(state.batcher.waiting if state.batcher else 0)
        return Response(state.metrics.render(), media_type=Metrics.CONTENT_TYPE)


def add_model_routes(app: FastAPI, state: ServerState) -> None:
    settings = state.settings

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
            None,
            ge=1,
            description=f"labels per image (default {settings.top_k}; clamped to the class count); a multi-label "
            "model answers every label's score instead",
        ),
        min_confidence: str | None = Query(
            None,
            description="a probability in (0, 1]: a prediction whose top probability is below it answers "
            '"unsure": true and "label": null (index, probability and top_k still show the top class); '
            f"default {settings.min_confidence} (--min-confidence); refused (422) for a multi-label model, whose "
            "labels each have their own threshold",
        ),
        reject: str | None = Query(
            None,
            description="ood: an image unlike the training data (its out-of-distribution score above the model's "
            'threshold) answers "unknown": true, "label": null (a multi-label model: "labels": []) and "ood" (the '
            f"score, its value and threshold); none: not rejected; default {settings.reject} (--reject); refused "
            "(422) for a model without out-of-distribution thresholds",
        ),
        ood_score: str | None = Query(
            None,
            description="the score reject=ood uses: knn, energy or msp (default: the server's --ood-score, else knn "
            "where the model has it, else energy)",
        ),
    ):
        if state.batcher is None:
            raise ApiError(503, "not_ready", "the server is starting")
        return await handle_predict(state, request, top_k, min_confidence, {"reject": reject, "ood_score": ood_score})

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
        return await handle_explain(state, request, target)
