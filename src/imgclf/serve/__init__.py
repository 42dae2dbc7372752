"""imgclf's HTTP service: FastAPI app, dynamic batching, Prometheus metrics and a web page.

    from imgclf.serve import ServeSettings, create_app, run
    app = create_app("runs/ants/best.pt", ServeSettings(max_batch_size=32))   # any file open_model reads
    run(app, host="127.0.0.1", port=8000)

`imgclf serve WEIGHTS_OR_EXPORT` is the same from the command line, and `imgclf-serve MODEL.onnx` (main.py) too,
without PyTorch: the command of the slim install (deploy/slim, docs/deployment.md).
"""

from __future__ import annotations

import importlib

__all__ = ["ServeSettings", "create_app", "bind", "run"]

_LAZY = {"ServeSettings": "settings", "create_app": "app", "bind": "server", "run": "server"}


def __getattr__(name):
    # Lazy, so that `imgclf.serve.server` can be imported (and malloc set up) before torch and FastAPI are.
    if name not in _LAZY:
        raise AttributeError(f"module 'imgclf.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
