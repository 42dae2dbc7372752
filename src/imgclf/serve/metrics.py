"""Prometheus metrics, in a registry of the app's own (two apps in one process, as in tests, never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no `_created` timestamp series next to every counter and histogram

# Paths and methods a label may take. Anything else is counted as "other", so a scanner that tries ten
# thousand URLs cannot make ten thousand time series.
PATHS = (
    "/",
    "/predict",
    "/explain",
    "/health",
    "/ready",
    "/metadata",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/docs/oauth2-redirect",
    "/docs-assets/swagger-ui-bundle.js",
    "/docs-assets/swagger-ui.css",
    "/docs-assets/redoc.standalone.js",
    "/docs-assets/favicon.png",
    "/favicon.ico",
)
METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


def batch_buckets(max_batch_size: int) -> tuple:
    """1, 2, 4, ... up to and including max_batch_size, so every batch size has a bucket it fills exactly."""
    b, out = 1, []
    while b < max_batch_size:
        out.append(b)
        b *= 2
    out.append(max_batch_size)
    return tuple(sorted(set(out)))


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imgclf_http_requests",
            "HTTP requests answered, by path, method and status code",
            ["path", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "imgclf_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, seconds",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "imgclf_batch_size",
            "Images per model batch (dynamic batching)",
            buckets=batch_buckets(max_batch_size),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "imgclf_batch_duration_seconds",
            "Model time per batch (stack, normalise, forward, softmax), seconds",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("imgclf_images_processed", "Images that went through the model", registry=r)
        self.rejected = Counter("imgclf_images_rejected", "Uploaded files refused, by reason", ["reason"], registry=r)
        self.unknown = Counter(
            "imgclf_images_unknown",
            "Images answered unknown (unlike the training data), by score",
            ["score"],
            registry=r,
        )
        self.queue = Gauge("imgclf_queue_images", "Images decoded and waiting for the model", registry=r)
        self.ready = Gauge("imgclf_ready", "1 once the model is loaded and warmed up", registry=r)

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        path = path if path in PATHS else "other"
        method = method if method in METHODS else "other"
        self.requests.labels(path, method, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
