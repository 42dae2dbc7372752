"""`imgclf-serve MODEL.onnx`: the service without the rest of imgclf, the console script of the slim install.

The slim install (deploy/slim: onnxruntime, FastAPI, uvicorn, Pillow, NumPy; no PyTorch) has no `imgclf`
command: the full CLI's parser imports the training configuration. This parser is its own and imports nothing
but the serving path; its flags are those of `imgclf serve` (a unit test keeps the two lists equal), less
--precision (an export runs in the precision it was exported in). With PyTorch installed it serves any file
`imgclf serve` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from imgclf.core.errors import ImgclfError, UsageError

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return parse


def _min_confidence(text: str) -> float:
    from imgclf.core.confidence import check_min_confidence
    from imgclf.core.errors import UsageError

    try:
        return check_min_confidence(text)
    except UsageError:
        raise argparse.ArgumentTypeError(
            f"give a probability above 0 and at most 1, such as 0.7, not '{text}'"
        ) from None


def add_trust_flags(p: argparse.ArgumentParser) -> None:
    """--min-confidence and --no-explain, for this parser and `imgclf serve`'s (cli.py) alike."""
    p.add_argument(
        "--min-confidence",
        type=_min_confidence,
        default=None,
        metavar="P",
        help='answer "unsure" (label null, "unsure": true; the top class still shown) when the top probability is '
        "below P, in (0, 1]; a request's min_confidence overrides it [none]",
    )
    p.add_argument(
        "--no-explain",
        action="store_true",
        help="no POST /explain (Grad-CAM overlays for a checkpoint, which keep a second copy of the model in memory; "
        "an export never has it)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgclf-serve",
        description="Serve an ONNX export over HTTP (no PyTorch needed): POST /predict, GET /health /ready "
        "/metadata /metrics, a web page at /, OpenAPI docs at /docs.",
    )
    p.add_argument("weights", metavar="MODEL", help="an `imgclf export --format onnx|onnx-int8` file (*.onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one [8000]")
    p.add_argument("--max-batch-size", type=int, default=32, help="images per model batch [32]")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images, ms [5]")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body, MiB [10]")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, pixels (from its header)")
    p.add_argument("--max-files", type=int, default=64, help="images per request [64]")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request time limit, seconds [30]")
    p.add_argument("--top-k", type=int, default=5, help="default labels per image [5]")
    p.add_argument("--api-key", default=None, help="require this key on /predict, /metadata and /metrics "
                   "(default: $IMGCLF_API_KEY; none when unset)")  # fmt: skip
    p.add_argument("--decode-workers", type=int, default=None, help="image decoding threads [CPU count, at most 4]")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [$OMP_NUM_THREADS, "
                   "else one per physical core]")  # fmt: skip
    p.add_argument("--max-concurrency", type=_positive(int), default=1024, help="open connections before 503 [1024]")
    p.add_argument("--header-timeout", type=_positive(float), default=10.0, help="seconds to send the headers [10]")
    p.add_argument("--access-log", action="store_true", help="log every request (off: /metrics counts them)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda needs onnxruntime-gpu) [auto]")
    add_trust_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def settings_from(a: argparse.Namespace):
    from imgclf.serve.app import ServeSettings

    key = a.api_key if a.api_key is not None else (os.environ.get("IMGCLF_API_KEY") or None)
    return ServeSettings(
        max_batch_size=a.max_batch_size,
        max_wait_ms=a.max_wait_ms,
        max_upload_mb=a.max_upload_mb,
        max_pixels=a.max_pixels,
        max_files=a.max_files,
        timeout_s=a.timeout,
        top_k=a.top_k,
        api_key=key,
        decode_workers=a.decode_workers,
        device=a.device,
        threads=a.threads,
        precision=getattr(a, "precision", "auto"),  # `imgclf serve --precision`; an export runs as exported
        min_confidence=a.min_confidence,
        explain=not a.no_explain,
    ).check()


def serve(a: argparse.Namespace) -> int:
    """Open the model, bind, serve until stopped: imgclf-serve's and `imgclf serve`'s (cli.cmd_serve) one path."""
    from imgclf.serve.server import bind, limit_malloc_arenas, run, url_of

    limit_malloc_arenas()  # first: before numpy and onnxruntime start threads
    # python-multipart logs a warning for every malformed body before raising; the client gets a 400 that says
    # so, and a scanner must not be able to fill the server's log. Set here, for this process (a command's, not
    # a library call's): the library leaves an embedding application's loggers alone.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    from imgclf.serve.app import create_app

    settings = settings_from(a)
    app = create_app(a.weights, settings)  # opens the model: a bad file fails here, before any port is bound
    sock = bind(a.host, a.port)
    runner = app.state.imgclf.runner
    if settings.api_key is None and a.host not in LOCAL_HOSTS:
        log.warning("listening on %s without an API key: anyone who can reach it can use it (--api-key)", a.host)
    print(
        f"serving {runner.model_name} ({runner.format}, {len(runner.classes)} classes) on {url_of(sock)} "
        f"- web page /, API docs /docs; Ctrl-C stops",
        flush=True,
    )
    run(
        app,
        sock=sock,
        log_level="warning" if a.quiet else "info",
        access_log=a.access_log,
        max_concurrency=a.max_concurrency,
        header_timeout=a.header_timeout,
    )
    return 0


def _setup_logging(verbose: bool, quiet: bool) -> None:
    # This process's own logging (a console script, not a library call): imgclf's messages on stderr.
    # the handler is marked as imgclf.cli.main marks its own, so a second main() in one process replaces it (the
    # console script runs once; tests and embedding callers run it many times)
    root = logging.getLogger("imgclf")
    for old in list(root.handlers):
        if getattr(old, "_imgclf_cli", False):
            root.removeHandler(old)
    h = logging.StreamHandler(sys.stderr)
    h._imgclf_cli = True
    h.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Parse, serve until SIGINT/SIGTERM; 0 on a clean stop, 2 with one line on stderr for a usage error."""
    a = build_parser().parse_args(argv)
    _setup_logging(a.verbose, a.quiet)
    try:
        if not 0 <= a.port <= 65535:
            raise UsageError(f"--port must be 0..65535, got {a.port}")
        return serve(a)
    except ImgclfError as e:
        if a.verbose:
            log.exception("imgclf-serve failed")
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def run() -> None:  # the console script
    sys.exit(main())


if __name__ == "__main__":
    run()
