"""The server's options, declared once: `imgclf-serve`'s parser (serve/main.py) and `imgclf serve`'s (the CLI's
command table) are both generated from `ServeOptions` by core/options.py, so the two commands take the same
flags with the same help; `imgclf serve` adds --precision (`ServeCommandOptions`: a checkpoint's; an export runs
in the precision it was exported in).

Torch-free and YAML-free: the slim install (deploy/slim/MODULES) builds `imgclf-serve --help` from this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.options import opt
from imgclf.core.shared_options import (
    DEVICE,
    MAX_PIXELS,
    MIN_CONFIDENCE,
    MODEL_STORE_HELP,
    OOD_SCORE,
    PRECISION,
    REJECT,
    TRACKING_URI,
    Console,
)


@dataclass(frozen=True, kw_only=True)
class ServeOptions(Console):
    # the groups of --help: each starts at the option named
    SECTIONS = {"network": "host", "requests": "max_batch_size", "model": "device"}

    weights: str = opt(
        help="checkpoint (runs/NAME/best.pt) or exported model file; without PyTorch (the slim install), an "
        "`imgclf export --format onnx|onnx-int8` file (*.onnx); or models:/NAME/VERSION, a model registered in MLflow "
        "(--tracking-uri)",
        positional=True,
        metavar="WEIGHTS_OR_EXPORT",
    )
    host: str = opt("127.0.0.1", "address to listen on; 0.0.0.0 for every interface")
    port: int = opt(8000, "TCP port; 0 picks a free one", ge=0, le=65535)
    api_key: str | None = opt(
        None, "require this key on /predict, /metadata and /metrics (default: $IMGCLF_API_KEY; none when unset)"
    )
    max_concurrency: int = opt(1024, "open connections before answering 503 (in JSON)", ge=1)
    header_timeout: float = opt(
        10.0, "seconds a client has to send its request headers before it is answered 408 and disconnected", gt=0
    )
    access_log: bool = opt(False, "log every request (off: /metrics counts them)")
    # the limits below are checked by ServeSettings.check (each with its own message), not at parse time
    max_batch_size: int = opt(32, "images per model batch")
    max_wait_ms: float = opt(5.0, "how long a batch waits for more images, ms")
    max_upload_mb: float = opt(10.0, "largest request body, MiB")
    max_pixels: int = MAX_PIXELS.field(
        help="largest image, pixels (from its header, before decoding; 413 above it)", range=None
    )
    max_files: int = opt(64, "images per request")
    timeout: float = opt(30.0, "per-request time limit, seconds")
    top_k: int = opt(5, "default labels per image")
    min_confidence: float | None = MIN_CONFIDENCE.field(
        help=MIN_CONFIDENCE.help + "; a request's min_confidence overrides it"
    )
    reject: str | None = REJECT.field(help=REJECT.help + "; a request's reject (ood or none) overrides it")
    ood_score: str | None = OOD_SCORE.field(help=OOD_SCORE.help + "; a request's ood_score overrides it")
    device: str = DEVICE.field(help=DEVICE.help + " (an ONNX export on cuda needs onnxruntime-gpu)")
    threads: int | None = opt(
        None,
        "the model's intra-op threads, PyTorch and onnxruntime [PyTorch's default: the cores, or $OMP_NUM_THREADS; "
        "onnxruntime's: $OMP_NUM_THREADS, else one per physical core]",
    )
    decode_workers: int | None = opt(None, "image decoding threads [CPU count, at most 4]")
    no_explain: bool = opt(
        False,
        "no POST /explain (Grad-CAM overlays for a checkpoint, which keep a second copy of the model in memory; "
        "an export never has it)",
    )
    tracking_uri: str | None = TRACKING_URI.field(help=MODEL_STORE_HELP)


@dataclass(frozen=True, kw_only=True)
class ServeCommandOptions(ServeOptions):
    """`imgclf serve`: the server's options and a checkpoint's --precision."""

    precision: str = PRECISION.field()
