"""Dynamic batching: images from concurrent requests share model batches.

A request puts its decoded images on one asyncio queue, each with a future. One worker task takes the first
waiting image, then whatever else arrives within `max_wait_s` of it, up to `max_batch_size` images, and runs
the model on them in a single dedicated thread, so the event loop keeps accepting and decoding requests while
the model computes. Images that queue up while a batch runs form the next batch without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """More images are waiting for the model than the server accepts (`max_queue`)."""


class DynamicBatcher:
    def __init__(
        self,
        predict: Callable[[list], Sequence],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        """`predict`: a list of N decoded images -> N probability vectors (float32 N x C), run in the model
        thread (stacking there too keeps the copy off the event loop). Any array type: no torch here, so the
        slim ONNX server never loads it."""
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="imgclf-model")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="imgclf-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run_model(self, fn, *args):
        """Run `fn` in the model thread (warm-up uses this, so nothing else ever calls the model concurrently)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, images: list) -> list:
        """Probabilities (one C-vector per image, in order). Raises Overloaded when the queue is full."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() + len(images) > self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} images are already waiting for the model")
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in images]
        for x, f in zip(images, futs):
            self._queue.put_nowait((x, f))
        try:
            return list(await asyncio.gather(*futs))
        except BaseException:
            for f in futs:  # a timed-out or failed request: the worker skips what is still queued
                f.cancel()
            raise

    async def _run(self) -> None:
        q, loop = self._queue, asyncio.get_running_loop()
        while True:
            batch = [await q.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(q.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(q.get(), remaining))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            batch = [(x, f) for x, f in batch if not f.done()]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, [x for x, _ in batch])
            except Exception as e:
                log.exception("model failed on a batch of %d images", len(batch))
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for (_, f), p in zip(batch, probs):
                if not f.done():
                    f.set_result(p)
