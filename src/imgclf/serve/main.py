"""`imgclf-serve MODEL.onnx`: the service without the rest of imgclf, the console script of the slim install.

The slim install (deploy/slim: onnxruntime, FastAPI, uvicorn, Pillow, NumPy; no PyTorch) has no `imgclf`
command: the full CLI's parser imports the training configuration. This parser is generated, as `imgclf serve`'s
is, from the one declaration of the server's options (serve/options.py), less --precision (an export runs in the
precision it was exported in), and imports nothing but the serving path. With PyTorch installed it serves any
file `imgclf serve` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from imgclf.core.errors import ImgclfError, UsageError
from imgclf.core.fileio import user_cache_home
from imgclf.core.logs import console_logging
from imgclf.core.options import add_options, check_options, options_from
from imgclf.core.tracking import fetched
from imgclf.serve.options import ServeOptions
from imgclf.serve.server import bind, limit_malloc_arenas, url_of
from imgclf.serve.server import run as run_server

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    """imgclf-serve's parser. Numbers are converted here but checked after parsing (`check_options`), so that
    every usage error is the one line `main` prints, with exit 2."""
    p = argparse.ArgumentParser(
        prog="imgclf-serve",
        description="Serve an ONNX export over HTTP (no PyTorch needed): POST /predict, GET /health /ready "
        "/metadata /metrics, a web page at /, OpenAPI docs at /docs.",
    )
    add_options(p, ServeOptions, ranges=False)
    return p


def settings_of(a: ServeOptions) -> dict:
    """The ServeSettings of the options (to check and build once serve.app is imported)."""
    key = a.api_key if a.api_key is not None else (os.environ.get("IMGCLF_API_KEY") or None)
    return dict(
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
        reject=a.reject,
        ood_score=a.ood_score,
        explain=not a.no_explain,
    )


def serve(a: ServeOptions) -> int:
    """Open the model, bind, serve until stopped: imgclf-serve's and `imgclf serve`'s (cli/run_serve.py) one path."""
    limit_malloc_arenas()  # first: before numpy and onnxruntime start threads
    # The one import inside a function of imgclf's own: serve.app imports NumPy, whose BLAS starts its threads
    # when loaded, and the arena limit above must come before any thread but the main one exists.
    from imgclf.serve.app import ServeSettings, create_app  # noqa: PLC0415 - after limit_malloc_arenas (numpy)

    # python-multipart logs a warning for every malformed body before raising; the client gets a 400 that says
    # so, and a scanner must not be able to fill the server's log. Set here, for this process (a command's, not
    # a library call's): the library leaves an embedding application's loggers alone.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    a = fetched(a, user_cache_home())  # a WEIGHTS of models:/NAME/VERSION: the registered file (MLflow loads NumPy)
    settings = ServeSettings(**settings_of(a)).check()
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
    run_server(
        app,
        sock=sock,
        log_level="warning" if a.quiet else "info",
        access_log=a.access_log,
        max_concurrency=a.max_concurrency,
        header_timeout=a.header_timeout,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse, serve until SIGINT/SIGTERM; 0 on a clean stop, 2 with one line on stderr for a usage error."""
    a = options_from(ServeOptions, vars(build_parser().parse_args(argv)))
    console_logging(a.verbose, a.quiet)
    try:
        if not 0 <= a.port <= 65535:  # before check_options: the message this script has always given
            raise UsageError(f"--port must be 0..65535, got {a.port}")
        check_options(a)
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
