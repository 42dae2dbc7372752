"""The service's limits and options (`ServeSettings`), with the CLI's defaults and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.confidence import check_min_confidence
from imgclf.core.errors import UsageError
from imgclf.data.images import MAX_PIXELS


@dataclass
class ServeSettings:
    """Every limit of the service, with the CLI's defaults."""

    max_batch_size: int = 32  # images per model batch
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_upload_mb: float = 10.0  # request body, MiB
    max_pixels: int = MAX_PIXELS  # per image, from its header, before decoding: every command's limit
    max_files: int = 64  # images per request
    timeout_s: float = 30.0  # whole request: upload, decode, queue, model
    api_key: str | None = None  # when set: Authorization: Bearer KEY, or X-API-Key: KEY
    top_k: int = 5  # default labels per image (clamped to the class count)
    decode_workers: int | None = None  # decode threads (default: the CPU count, at most 4)
    max_queue: int = 1024  # images waiting for the model before the server answers 503
    warmup: bool = True  # run the model on dummy batches before /ready says yes
    device: str = "auto"  # used when create_app opens a path itself
    precision: str = "auto"
    threads: int | None = None  # onnxruntime intra-op threads for a .onnx path (None: onnxrt.default_threads)
    min_confidence: float | None = None  # default threshold under which a prediction is "unsure" (core/confidence.py)
    # default rejection of images unlike the training data (core/ood.py): "ood" or None, and its score (None: the
    # model's default); checked against the model's record when create_app opens it; a request may override both
    reject: str | None = None
    ood_score: str | None = None
    explain: bool = True  # load a second copy of a checkpoint's model for Grad-CAM (/explain); exports never

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> ServeSettings:
        def need(ok, msg):
            if not ok:
                raise UsageError(msg)

        need(1 <= self.max_batch_size <= 4096, f"--max-batch-size must be 1..4096, got {self.max_batch_size}")
        need(0 <= self.max_wait_ms <= 10_000, f"--max-wait-ms must be 0..10000, got {self.max_wait_ms}")
        need(self.max_upload_mb > 0, f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        need(self.max_pixels >= 1, f"--max-pixels must be positive, got {self.max_pixels}")
        need(self.max_files >= 1, f"--max-files must be at least 1, got {self.max_files}")
        need(self.timeout_s > 0, f"--timeout must be positive, got {self.timeout_s}")
        need(self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}")
        need(
            self.decode_workers is None or self.decode_workers >= 1,
            f"--decode-workers must be at least 1, got {self.decode_workers}",
        )
        need(self.max_queue >= self.max_files, f"--max-queue must be at least --max-files ({self.max_files})")
        need(self.api_key is None or self.api_key.strip() != "", "--api-key is empty: give a key or leave it out")
        need(self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}")
        self.min_confidence = check_min_confidence(self.min_confidence)  # a UsageError naming --min-confidence
        return self
