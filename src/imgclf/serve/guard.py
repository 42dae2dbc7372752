"""The outermost layers of the app (pure ASGI): the headers every answer carries (no framing by another site,
no content sniffing), then the API key check and per-path metrics for every answer, errors included."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders

from imgclf.serve.metrics import Metrics
from imgclf.serve.responses import error_response

# On every answer, errors and /docs included (OWASP's headers for an API): no other site may frame a page of
# this origin (the web page holds an API-key field: clickjacking), and no browser guesses a content type. A
# response that sets its own Content-Security-Policy (the web page's, routes.PAGE_HEADERS) keeps it, and that one
# says frame-ancestors 'none' too.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}

# Paths that need the API key when one is set. /, /health, /ready and the OpenAPI docs stay open: a load
# balancer probes health without secrets, and the page and docs hold nothing but code.
PROTECTED = ("/predict", "/explain", "/metadata", "/metrics")


@dataclass
class StatusSeen:
    """An ASGI `send` that remembers the status its response started with: 500 until one starts (an app that
    fails before answering)."""

    send: object
    status: int = 500

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class SecurityHeaders:
    """Pure ASGI middleware: SECURITY_HEADERS on every HTTP response, unless the response set that header
    itself."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class Guard:
    """Pure ASGI middleware: the API key check and the request metrics, for every response (errors too)."""

    def __init__(self, app, *, api_key: str | None, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.key = api_key.encode() if api_key else None

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
        seen = StatusSeen(send)
        path = scope.get("path", "")
        try:
            if self.key is not None and path in PROTECTED and not self.authorised(scope):
                resp = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await resp(scope, receive, seen)
            else:
                await self.app(scope, receive, seen)
        finally:
            self.metrics.observe_request(path, scope.get("method", ""), seen.status, time.perf_counter() - t0)
