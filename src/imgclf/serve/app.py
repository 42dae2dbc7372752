"""The HTTP service: `create_app(runner_or_path, settings)` -> a FastAPI app.

Checks up front, then decode, batch, predict, encode:

1. the guard (outermost, pure ASGI; guard.py): the security headers of every answer (no framing, no sniffing),
   the API key, then per-path metrics for every answer, errors included;
2. /predict and /explain (routes.py, endpoints.py): content type and Content-Length checked before the body is
   read, the multipart body parsed as it arrives within the upload limit (upload.py), every file decoded in a
   thread pool (decode.py), the images batched with other requests' (batcher.py), the whole request under
   `timeout_s`; the state they share (the model, pools, batcher, metrics) is state.py's ServerState.
3. The model: `model.open_served` picks it. A `.onnx` export runs in onnxruntime with NumPy preprocessing and
   the app never imports torch (the slim install, `imgclf-serve`); anything else goes through a PyTorch
   Runner. The endpoints only see `probabilities(images)` and the Runner's descriptive attributes.
4. Every refusal is JSON (responses.py): {"error": CODE, "detail": "what is wrong and how to fix it"}. A client's
   input gives a 4xx; 5xx are kept for the server's own trouble (503 overloaded or still warming up, 504 too
   slow, 500 a bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

try:  # Swagger UI's and ReDoc's files in a package, served by the app itself (a dependency; see _fastapi)
    from fastapi_offline import FastAPIOffline
except ImportError:  # pragma: no cover - an install without it: no /docs page rather than a CDN's
    FastAPIOffline = None

from imgclf.core.confidence import refuse_for_multilabel
from imgclf.core.multilabel import SINGLE
from imgclf.core.version import __version__
from imgclf.serve.guard import PROTECTED, Guard, SecurityHeaders
from imgclf.serve.model import open_explainer, open_served
from imgclf.serve.responses import add_error_handlers
from imgclf.serve.routes import add_info_routes, add_model_routes
from imgclf.serve.settings import ServeSettings
from imgclf.serve.state import ServerState

log = logging.getLogger(__name__)

__all__ = ["ServeSettings", "create_app"]


def create_app(runner_or_path, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving `runner_or_path`: a Runner from `runtime.open_model`, or a path (a `.onnx` export is
    opened without torch, anything else with `runtime.open_model`; see model.open_served).

    The model is warmed up in the background after startup; /ready answers 200 once it is done."""
    settings = (settings or ServeSettings()).check()
    runner, model = open_served(runner_or_path, settings)
    # --min-confidence with a multi-label model: a UsageError naming the flag, before anything else starts
    refuse_for_multilabel(getattr(model, "task", SINGLE), settings.min_confidence)
    state = ServerState(runner, model, settings)  # --reject / --ood-score checked against the model's record
    state.explainer, state.explain_info = open_explainer(runner, settings)

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

    app = _fastapi(
        title="imgclf",
        version=__version__,
        lifespan=lifespan,
        description=f"Image classifier service: {runner.model_name} ({runner.format}), "
        f"{len(state.classes)} classes. Protected with an API key: "
        f"{'yes' if settings.api_key else 'no'} ({', '.join(PROTECTED)}).",
    )
    app.state.imgclf = state
    add_error_handlers(app)
    add_info_routes(app, state)
    add_model_routes(app, state)
    app.add_middleware(Guard, api_key=settings.api_key, metrics=state.metrics)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so the guard's 401s carry the headers too
    return app


DOCS_ASSETS = "/docs-assets"  # where /docs and /redoc load Swagger UI's and ReDoc's scripts, CSS and icon from


def _fastapi(**kwargs) -> FastAPI:
    """The FastAPI app, its /docs (Swagger UI) and /redoc pages loading their scripts from the app itself, out of
    the fastapi-offline package (FastAPI's documented self-hosting of the docs' assets, packaged): an air-gapped
    server has working docs, and no third-party script runs on the model's origin, next to the page's API-key
    field. FastAPI's own pages would load them from a CDN by major version, without an integrity hash. Where the
    package is missing (an install that left it out), there is no /docs nor /redoc, never the CDN's:
    /openapi.json still describes the API."""
    if FastAPIOffline is not None:
        return FastAPIOffline(static_url=DOCS_ASSETS, **kwargs)
    log.warning("no /docs page: the fastapi-offline package is not installed (/openapi.json describes the API)")
    return FastAPI(docs_url=None, redoc_url=None, **kwargs)
