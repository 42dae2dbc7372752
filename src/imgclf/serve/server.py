"""Running the app under uvicorn on a socket we bind ourselves, so a busy port is a one-line error and
`--port 0` picks a free port and says which."""
from __future__ import annotations

import signal
import socket
import threading

from ..errors import UsageError


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX) before any thread but the main one exists.

    glibc gives each thread that allocates under contention an arena of its own, up to 8 per core, and
    memory freed into one arena is not reused by the others. In the server, decode threads, the model thread
    and the event loop all allocate and free image-sized buffers: with the default, resident memory grew by 11%
    over 3,000 requests after warm-up (EfficientNet-Lite0 int8, 2 cores) and kept creeping; with 2 arenas it
    stayed flat, at the same speed. Must run before torch or numpy start threads (a limit set later is
    ignored); MALLOC_ARENA_MAX in the environment wins. Returns whether the limit was set."""
    import os

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
        import ctypes
        import ctypes.util

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


def run(app, *, host: str = "127.0.0.1", port: int = 8000, sock: socket.socket | None = None,
        log_level: str = "info", access_log: bool = False, max_concurrency: int | None = None) -> None:
    """Serve `app` until SIGINT or SIGTERM (then finish the requests in flight, at most 10 s)."""
    import uvicorn

    sock = sock or bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, server_header=False,
                            limit_concurrency=max_concurrency, timeout_graceful_shutdown=10,
                            timeout_keep_alive=5, lifespan="on")
    # uvicorn re-raises the stopping signal once its graceful shutdown is over. For SIGTERM (what a process
    # manager sends) the server has finished its work by then: it is ignored, and `imgclf serve` exits 0.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if main else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
