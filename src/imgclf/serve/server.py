"""Running the app under uvicorn on a socket we bind ourselves, so a busy port is a one-line error and
`--port 0` picks a free port and says which; and the connection-level limits uvicorn lacks.

uvicorn (0.54, h11 and httptools alike) never times out a connection that has not finished its request headers:
its keep-alive timer runs only between requests and is cancelled by the first byte received, and an ASGI
middleware only sees a request once its headers are complete. So a few sockets that send half a request line
hold their places under --max-concurrency forever, and every request after them gets a 503 (slow loris).
`make_server` gives uvicorn its own HTTP protocol class with a deadline for the headers, and with the 503 over the
concurrency limit answered in JSON like every other refusal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import threading

import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from imgclf.core.errors import UsageError

# Seconds a client has to send a request's headers, from the moment the connection opens or its previous response
# ends. A real client sends them in one packet, a slow mobile link in well under a second; the body's upload is
# bounded by the app's per-request timeout (--timeout) instead.
HEADER_TIMEOUT_S = 10.0


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX) before any thread but the main one exists.

    glibc gives each thread that allocates under contention an arena of its own, up to 8 per core, and
    memory freed into one arena is not reused by the others. In the server, decode threads, the model thread
    and the event loop all allocate and free image-sized buffers: with the default, resident memory kept
    creeping under load; with 2 arenas it stayed flat, at the same speed (docs/benchmarks.md). Must run before torch or numpy start threads (a limit set later is
    ignored); MALLOC_ARENA_MAX in the environment wins. Returns whether the limit was set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    return bool(libc.mallopt(-8, int(n))) if libc else False  # -8: M_ARENA_MAX


def trim_malloc() -> None:
    """glibc's malloc_trim(0): give the free pages inside malloc's heaps back to the kernel (a few ms; a no-op
    elsewhere)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


_LIBC = None


def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None (macOS, musl). Loaded once."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.mallopt, _LIBC.malloc_trim  # noqa: B018 - AttributeError when it is not glibc
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port). Raises UsageError when that cannot be."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot listen on '{host}': {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    try:
        sock = socket.create_server(addr[:2] if family == socket.AF_INET else addr, family=family, backlog=2048)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
    log_level: str = "info",
    access_log: bool = False,
    max_concurrency: int | None = None,
    header_timeout: float = HEADER_TIMEOUT_S,
    http: str = "auto",
) -> None:
    """Serve `app` until SIGINT or SIGTERM (then finish the requests in flight, at most 10 s).

    max_concurrency: open connections (and requests in progress) before a request is answered 503 (None: no
    limit). header_timeout: seconds a client has to send its request headers before it is disconnected.
    http: uvicorn's HTTP implementation, "auto" (httptools when installed), "httptools" or "h11"."""
    server = make_server(
        app,
        log_level=log_level,
        access_log=access_log,
        max_concurrency=max_concurrency,
        header_timeout=header_timeout,
        http=http,
    )
    sock = sock or bind(host, port)
    # uvicorn re-raises the stopping signal once its graceful shutdown is over. For SIGTERM (what a process
    # manager sends) the server has finished its work by then: it is ignored, and `imgclf serve` exits 0.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if main else None
    try:
        server.run(sockets=[sock])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def make_server(
    app,
    *,
    log_level: str = "info",
    access_log: bool = False,
    max_concurrency: int | None = None,
    header_timeout: float = HEADER_TIMEOUT_S,
    http: str = "auto",
):
    """The uvicorn.Server `run` runs (`server.run(sockets=[sock])`; `server.should_exit = True` stops it).
    Raises UsageError for a bad limit."""
    if max_concurrency is not None and max_concurrency < 1:
        raise UsageError(f"--max-concurrency must be at least 1, got {max_concurrency}")
    if not header_timeout > 0:
        raise UsageError(f"--header-timeout must be positive, got {header_timeout}")
    if http not in ("auto", "httptools", "h11"):  # the ones `_Guarded` knows the insides of
        raise UsageError(f"http must be auto, httptools or h11, got '{http}'")
    protocol = guarded_protocol(import_from_string(HTTP_PROTOCOLS[http]), header_timeout=header_timeout)
    # ws="none": the app has no WebSocket routes, and an upgraded connection would escape the header deadline
    config = uvicorn.Config(
        app,
        http=protocol,
        ws="none",
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        limit_concurrency=max_concurrency,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=5,
        lifespan="on",
    )
    return uvicorn.Server(config)


def guarded_protocol(base: type, *, header_timeout: float) -> type:
    """uvicorn's HTTP protocol class `base` (h11 or httptools) with a header deadline and a JSON 503."""
    return type(f"Guarded{base.__name__}", (_Guarded, base), {"header_timeout": float(header_timeout)})


class _Guarded:
    """Mixed in before uvicorn's H11Protocol or HttpToolsProtocol (both keep `loop`, `transport`, `cycle`,
    `connections`, `tasks`, `app` and `limit_concurrency`, and call `on_response_complete`).

    The deadline runs while the connection waits for a request's headers: from connection_made, and again from
    the end of each response on a kept-alive connection; it stops when the headers are complete (uvicorn starts a
    new request cycle). It is not reset by each byte: a client that trickles its headers is cut off too. A
    client that sent part of a request gets a JSON 408 before the connection closes; an idle one is just closed,
    and so is one still sending the body of a request that was already answered (the app's 408 upload_timeout or
    413 upload_too_large answer before the body has arrived).
    """

    header_timeout = HEADER_TIMEOUT_S

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = None
        self._partial = False  # bytes arrived since the deadline was armed
        self._quiet = False  # the deadline closes without a 408: the last request was answered, its body unread
        # The concurrency limit is checked by `_limited` instead of uvicorn, whose 503 is plain text.
        limit, self.limit_concurrency = self.limit_concurrency, None
        if limit is not None:
            self.app = _limited(self.app, limit, self.connections, self.tasks)

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            self._partial = True
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()
        # kept alive and not already busy with a pipelined request: waiting for the next request's headers
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm(quiet=answered is not None and answered.more_body)

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, quiet: bool = False) -> None:
        self._disarm()
        self._partial, self._quiet = False, quiet
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._partial and not self._quiet:
            self.transport.write(
                _json_response(
                    408,
                    "Request Timeout",
                    "header_timeout",
                    f"the request headers did not arrive within {self.header_timeout:g} s (--header-timeout)",
                )
            )
        self.transport.close()


def _limited(app, limit: int, connections: set, tasks: set):
    """`app`, answering 503 in JSON past uvicorn's own concurrency rule: `limit` or more open connections, or
    more than `limit` requests in progress (this request's task is already counted when it runs)."""
    log = logging.getLogger("uvicorn.error")

    async def limited(scope, receive, send):
        if scope["type"] == "http" and (len(connections) >= limit or len(tasks) > limit):
            log.warning("Exceeded concurrency limit.")
            body = _json_body(
                "overloaded",
                f"the server is at its limit of {limit} open connections and "
                f"requests in progress (--max-concurrency); retry shortly",
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return limited


def _json_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


def _json_response(status: int, reason: str, code: str, detail: str) -> bytes:
    body = _json_body(code, detail)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n\r\n"
    )
    return head.encode() + body
