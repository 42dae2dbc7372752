"""What the endpoints share (`ServerState`): the model, the limits, the thread pools, the batcher and the metrics,
started and stopped with the app, and the warm-up that decides when /ready says yes."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from imgclf.core.multilabel import SINGLE
from imgclf.core.ood import check_reject
from imgclf.serve.batcher import DynamicBatcher
from imgclf.serve.metrics import Metrics
from imgclf.serve.server import trim_malloc
from imgclf.serve.settings import ServeSettings

log = logging.getLogger(__name__)

# How often the model thread hands freed heap memory back to the kernel (glibc malloc_trim), seconds. Batches of
# every size from 1 to max_batch_size leave holes in malloc's heaps that are reused but never returned: resident
# memory grew less with it, at the same speed (docs/benchmarks.md).
TRIM_EVERY_S = 5.0


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Batch sizes to run before /ready: the largest first (so allocators size their first block for it), then
    a spread of the others in a mixed order, the way concurrent traffic arrives."""
    m = max_batch_size
    mixed = [1, m // 2 + 1, m, m // 4 + 1, (3 * m) // 4 + 1, m, 2, m // 8 + 1, m]
    return [m] + [n for n in mixed if 1 <= n <= m]


class ServerState:
    """What the endpoints share: the model, the limits, the pools, the batcher and the metrics.

    `runner`: what create_app was given or opened; `model`: the same with `probabilities` (see model.py)."""

    def __init__(self, runner, model, settings: ServeSettings, explainer=None, explain_info: dict | None = None):
        self.runner = runner
        self.model = model
        self.settings = settings
        self.explainer = explainer  # explain.Explainer for a checkpoint, else None (see model.open_explainer)
        self.explain_info = explain_info or {"available": False, "reason": "no explainer"}
        self.explain_pool: ThreadPoolExecutor | None = None
        self.classes = list(model.classes)
        # core/multilabel.py: single (the top classes) or multilabel (a label set by `thresholds`, and scores)
        self.task = getattr(model, "task", SINGLE)
        self.thresholds = getattr(model, "thresholds", None)
        # core/ood.py's record (None: the model cannot say "unknown"), and the server's default rejection score:
        # --reject / --ood-score checked against it (one UsageError line) before anything else is loaded
        self.ood = getattr(model, "ood", None)
        self.ood_score = check_reject(settings.reject, settings.ood_score, self.ood)
        self.preprocess = model.preprocess
        self.metrics = Metrics(settings.max_batch_size)
        self.decode_workers = settings.decode_workers or max(1, min(4, os.cpu_count() or 1))
        self.decode_pool: ThreadPoolExecutor | None = None
        self.batcher: DynamicBatcher | None = None
        self.ready = False
        self.not_ready_reason = "starting"
        self._last_trim = time.monotonic()

    # -- the model thread --
    def predict_batch(self, images: list[np.ndarray]) -> list[tuple]:
        """uint8 images (S x S x 3 each) -> one (probabilities, scores) per image: float32 C probabilities, and
        {score name: value} of the out-of-distribution scores where the model has a record (else None), so that
        each request may reject or not from the same forward pass."""
        if self.ood is None:
            answers = [(p, None) for p in self.model.probabilities(images)]
        else:
            probs, scores = self.model.scored(images)
            answers = [(p, {n: float(v[i]) for n, v in scores.items()}) for i, p in enumerate(probs)]
        now = time.monotonic()
        if now - self._last_trim > TRIM_EVERY_S:
            self._last_trim = now
            trim_malloc()
        return answers

    def on_batch(self, n: int, seconds: float) -> None:
        self.metrics.batch_size.observe(n)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.images.inc(n)

    async def start(self) -> None:
        s = self.settings
        self.decode_pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="imgclf-decode")
        if self.explainer is not None:
            # one thread: one explanation at a time holds a full-size image and its map (the Explainer's lock
            # would serialise them anyway), and requests waiting their turn hold only their bytes
            self.explain_pool = ThreadPoolExecutor(1, thread_name_prefix="imgclf-explain")
        self.batcher = DynamicBatcher(
            self.predict_batch,
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_queue=s.max_queue,
            on_batch=self.on_batch,
        )
        self.batcher.start()

    async def warm_up(self) -> None:
        """First calls are slow (allocations, kernel selection): make them before /ready says yes."""
        self.not_ready_reason = "warming up the model"
        try:
            if self.settings.warmup:
                size = self.preprocess.img_size
                for n in warmup_sizes(self.settings.max_batch_size):
                    dummy = [np.zeros((size, size, 3), dtype=np.uint8)] * n
                    await self.batcher.run_model(self.predict_batch, dummy)
        except Exception as e:
            log.exception("warm-up failed")
            self.not_ready_reason = f"warm-up failed: {type(e).__name__}: {e}"
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("model warmed up, ready")

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        for pool in (self.decode_pool, self.explain_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
