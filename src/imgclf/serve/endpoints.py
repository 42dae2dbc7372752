"""What /predict and /explain do with a request, after the checks up front: upload, decode, batch, encode.

/predict: every file is decoded in a thread pool, with the pixel count checked from the header first; the decoded
images go to the dynamic batcher; the whole request runs under `timeout_s`. Below `min_confidence` (the server's
default or the request's) a prediction answers "unsure", by `confidence.mark_unsure`, the rule of `imgclf predict`.
A multi-label model answers {"filename", "labels", "scores"} per image (`confidence.multilabel_result`, the rule
of `imgclf predict` too); top_k does not apply to it and min_confidence is refused (422).
"Unknown" (a request's reject=ood / ood_score, or the server's --reject default; reject=none switches it off): the
image's out-of-distribution score, computed in the same batch, against the model's threshold, by
`ood.mark_unknown`, the rule of `imgclf predict --reject ood` (single- and multi-label models alike).
/explain (a checkpoint only): the same upload checks for one image, then Grad-CAM (`explain.Explainer`, made once
at start-up by `model.open_explainer`) in a thread of its own, answering the overlay as a PNG.
"""

from __future__ import annotations

import asyncio
import functools
import json

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from imgclf.core.confidence import mark_unsure, refuse_for_multilabel
from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL
from imgclf.core.ood import check_reject, mark_unknown
from imgclf.serve.batcher import Overloaded
from imgclf.serve.decode import ImageRejected, decode_upload, open_upload
from imgclf.serve.model import OVERLAY_MAX_SIDE
from imgclf.serve.responses import ApiError, encode_multilabel, encode_prediction
from imgclf.serve.state import ServerState
from imgclf.serve.upload import (
    Phase,
    check_upload_headers,
    parse_min_confidence,
    parse_text,
    parse_top_k,
    read_upload,
    within_timeout,
)

# /predict's optional form fields, each parsed as it arrives (reject and ood_score are checked by `rejection`)
PREDICT_FIELDS = {
    "top_k": parse_top_k,
    "min_confidence": parse_min_confidence,
    "reject": parse_text,
    "ood_score": parse_text,
}


async def handle_predict(
    state: ServerState, request: Request, top_k: int | None, min_confidence: str | None, ood: dict
) -> JSONResponse:
    """/predict; `ood`: the query's "reject" and "ood_score" (None where not given)."""
    s = state.settings
    threshold = parse_min_confidence(min_confidence) if min_confidence is not None else s.min_confidence
    check_unsure(state, threshold)
    rejection(state, ood)  # a bad query value is refused before the body is read
    check_upload_headers(request, s)
    phase = Phase()
    return await within_timeout(predict(state, request, top_k, threshold, ood, phase), phase, "the prediction", s)


async def predict(
    state: ServerState, request: Request, top_k: int | None, threshold: float | None, ood: dict, phase: Phase
) -> JSONResponse:
    s = state.settings
    up = await read_upload(request, s, PREDICT_FIELDS, s.max_files)
    top_k = up.values.get("top_k", top_k)
    threshold = up.values.get("min_confidence", threshold)
    check_unsure(state, threshold)
    score = rejection(state, {k: up.values.get(k, v) for k, v in ood.items()})
    phase.name = "decode"
    images = await decode_all(state, up.names, up.datas)
    up.datas = []  # the uploaded bytes, freed before the images wait for the model
    phase.name = "model"
    try:
        results = await state.batcher.submit(images)
    except Overloaded as e:
        raise ApiError(
            503, "overloaded", f"the server is overloaded ({e}); retry shortly", headers={"Retry-After": "1"}
        ) from None
    if state.task == MULTILABEL:  # the label set by the model's thresholds and every label's score; no top k
        answers = [encode_multilabel(n, p, state.classes, state.thresholds) for n, (p, _) in zip(up.names, results)]
    else:
        k = max(1, min(top_k or s.top_k, len(state.classes)))
        answers = [encode_prediction(n, p, state.classes, k, threshold) for n, (p, _) in zip(up.names, results)]
    if score is not None:
        limit = state.ood["thresholds"][score]
        for a, (_, scores) in zip(answers, results):
            mark_unknown(a, score, scores[score], limit)
        state.metrics.unknown.labels(score).inc(sum(a["unknown"] for a in answers))
    return JSONResponse({"predictions": answers})


def rejection(state: ServerState, ood: dict) -> str | None:
    """The score a request's answers are rejected by (None: none): its "reject" (ood, or none to switch the
    server's default off) and "ood_score", else the server's --reject and --ood-score; a value the model cannot
    take is a 422 that names the field."""
    reject, score = ood.get("reject"), ood.get("ood_score")
    reject = state.settings.reject if reject is None else reject
    if reject == "none":
        reject = None
    elif score is None:
        score = state.settings.ood_score  # the server's --ood-score (None without its --reject: the model's default)
    try:
        return check_reject(reject, score, state.ood, "reject", "ood_score")
    except UsageError as e:
        field = "ood_score" if str(e).startswith("ood_score") else "reject"
        raise ApiError(422, f"invalid_{field}", str(e)) from None


def check_unsure(state: ServerState, threshold: float | None) -> None:
    """A request's min_confidence for a multi-label model: a 422 that says why (the server's own default is
    refused at start-up, by the same rule)."""
    try:
        refuse_for_multilabel(state.task, threshold, "min_confidence")
    except UsageError as e:
        raise ApiError(422, "invalid_min_confidence", str(e)) from None


async def decode_all(state: ServerState, names: list, datas: list) -> list:
    """Every file decoded in the decode threads; the first one refused is the request's answer."""
    loop = asyncio.get_running_loop()
    decode = functools.partial(decode_upload, preprocess=state.preprocess, max_pixels=state.settings.max_pixels)
    results = await asyncio.gather(
        *[loop.run_in_executor(state.decode_pool, decode, d) for d in datas], return_exceptions=True
    )
    for i, r in enumerate(results):
        if isinstance(r, ImageRejected):
            state.metrics.rejected.labels(r.code).inc()
            where = f"image {i + 1} of {len(results)}" + (f" ('{names[i][:80]}')" if names[i] else "")
            raise ApiError(r.status, r.code, f"{where}: {r}", index=i, filename=names[i])
        if isinstance(r, BaseException):
            raise r
    return results


async def handle_explain(state: ServerState, request: Request, target: str | None) -> Response:
    if state.explainer is None:
        raise ApiError(400, "explain_unavailable", state.explain_info["reason"])
    if target is not None:
        check_target(state, target)
    check_upload_headers(request, state.settings)
    phase = Phase()
    return await within_timeout(explain(state, request, target, phase), phase, "the explanation", state.settings)


def check_target(state: ServerState, label: str) -> str:
    try:
        state.explainer.class_index(label)
    except UsageError as e:
        raise ApiError(422, "unknown_target", str(e)) from None
    return label


async def explain(state: ServerState, request: Request, target: str | None, phase: Phase) -> Response:
    up = await read_upload(request, state.settings, {"target": functools.partial(check_target, state)}, max_files=1)
    target = up.values.get("target", target)
    phase.name = "model"
    loop = asyncio.get_running_loop()
    name = up.names[0]
    try:
        png, info = await loop.run_in_executor(state.explain_pool, explain_one, state, up.datas[0], target)
    except ImageRejected as r:
        state.metrics.rejected.labels(r.code).inc()
        where = f" ('{name[:80]}')" if name else ""
        raise ApiError(r.status, r.code, f"the image{where}: {r}", filename=name) from None
    except MemoryError:  # the server's trouble, as an overloaded queue: never a 500
        raise ApiError(
            503,
            "overloaded",
            "the server ran out of memory explaining this image; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    info = mark_unsure({k: v for k, v in info.items() if k != "path"}, state.settings.min_confidence)
    # ensure_ascii: a header is Latin-1, and a class name may be anything
    return Response(png, media_type="image/png", headers={"X-Explanation": json.dumps(info, ensure_ascii=True)})


def explain_one(state: ServerState, data: bytes, target: str | None) -> tuple[bytes, dict]:
    """In the explain thread: decode with the upload checks, then Grad-CAM and the overlay (PNG bytes)."""
    image = open_upload(data, resize=state.preprocess.resize, max_pixels=state.settings.max_pixels)
    try:
        return state.explainer.overlay_png(image, target, max_side=OVERLAY_MAX_SIDE)
    except UsageError as e:  # an image Pillow opened but the explainer could not process
        raise ImageRejected("unreadable_image", str(e)) from None
