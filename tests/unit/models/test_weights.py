"""Downloading pretrained weights: a timeout on the download's own connection, never a process-wide one.

A real HTTP server on 127.0.0.1 in a thread stands in for the weights host (nothing leaves the machine)."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from imgclf.core.errors import WeightsUnavailableError
from imgclf.models import registry

PAYLOAD = b"not really weights, but bytes to copy" * 1000


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler):
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def weights_host():
    """Serves PAYLOAD and records the process's socket default timeout while the download is under way."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(socket.getdefaulttimeout())
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    server = _serve(Handler)
    yield f"http://127.0.0.1:{server.server_address[1]}/w.pth", seen
    server.shutdown()
    server.server_close()


def test_download_leaves_the_socket_default_timeout_alone(tmp_path, weights_host):
    url, seen = weights_host
    before = socket.getdefaulttimeout()
    dst = tmp_path / "hub" / "w.pth"
    registry._download(url, str(dst), "somenet")
    assert dst.read_bytes() == PAYLOAD
    # neither during the download (other threads of the caller use the default) nor after
    assert seen == [before]
    assert socket.getdefaulttimeout() == before


def test_download_times_out_on_a_silent_host(tmp_path, monkeypatch):
    """A host that accepts the connection and never answers: one line after the timeout, no file, no hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    monkeypatch.setattr(registry, "DOWNLOAD_TIMEOUT_S", 0.5)
    dst = tmp_path / "w.pth"
    try:
        with pytest.raises(WeightsUnavailableError) as ei:
            registry._download(f"http://127.0.0.1:{listener.getsockname()[1]}/w.pth", str(dst), "somenet")
    finally:
        listener.close()
    msg = str(ei.value)
    assert "timed out" in msg and str(dst) in msg and "\n" not in msg
    assert not dst.exists() and list(tmp_path.iterdir()) == []
    assert socket.getdefaulttimeout() is None
