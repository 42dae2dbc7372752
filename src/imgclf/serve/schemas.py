"""The service's answers and request bodies as the OpenAPI docs (/docs, /openapi.json) describe them.

Responses are built by hand (`responses.py`), not validated per request: these models only document them.
"""

from __future__ import annotations

from pydantic import BaseModel

from imgclf.core.ood import SCORES
from imgclf.serve.decode import IMAGE_FORMATS
from imgclf.serve.model import OVERLAY_MAX_SIDE


class LabelProbability(BaseModel):
    label: str
    probability: float


class OodScore(BaseModel):
    """The out-of-distribution score an answer was judged by (reject=ood): above its threshold, "unknown"."""

    score: str  # knn, energy or msp
    value: float
    threshold: float


class Prediction(BaseModel):
    """A single-label model's answer has label, index, probability, top_k (and unsure with a min_confidence); a
    multi-label model's has labels (the set its per-label thresholds give, in class order; possibly empty) and
    scores (every label's probability). With reject=ood either has unknown and ood; an unknown image's label is
    null (labels empty), the rest still given."""

    filename: str | None
    label: str | None = None  # None when unsure
    index: int | None = None
    probability: float | None = None
    top_k: list[LabelProbability] | None = None
    unsure: bool | None = None  # only with a min_confidence: the top probability is below it
    labels: list[str] | None = None  # a multi-label model only
    scores: dict[str, float] | None = None  # a multi-label model only
    unknown: bool | None = None  # only with reject=ood: the image is unlike the training data
    ood: OodScore | None = None  # only with reject=ood


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
                        "reject": {
                            "type": "string",
                            "enum": ["ood", "none"],
                            "description": "ood: answer 'unknown' for an image unlike the training data; none: do "
                            "not (overrides the query and the server's --reject)",
                        },
                        "ood_score": {
                            "type": "string",
                            "enum": list(SCORES),
                            "description": "the score reject=ood uses (overrides the query)",
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
        "or a bad top_k or min_confidence, or a reject or ood_score the model cannot do (no out-of-distribution "
        "thresholds, no kNN)",
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
