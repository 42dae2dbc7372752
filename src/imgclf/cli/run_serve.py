"""What `imgclf serve` runs: imgclf-serve's own path (serve/main.py), plus --precision and PyTorch's thread count.
A module of its own, importing what imgclf-serve imports and no more, because glibc's malloc arenas are capped
before torch or numpy start threads (serve/server.py: limit_malloc_arenas)."""

from __future__ import annotations

from imgclf.core.errors import UsageError
from imgclf.serve.main import serve
from imgclf.serve.options import ServeCommandOptions
from imgclf.serve.server import limit_malloc_arenas


def serve_command(o: ServeCommandOptions) -> int:
    limit_malloc_arenas()  # first: before torch and numpy start threads
    if o.threads is not None:
        if o.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {o.threads}")
        import torch  # noqa: PLC0415 - only for --threads, after the arena limit; an export may be served without it

        torch.set_num_threads(o.threads)  # a checkpoint runs on PyTorch's threads; onnxruntime sessions get the same
    return serve(o)
