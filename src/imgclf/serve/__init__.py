"""imgclf's HTTP service: FastAPI app, dynamic batching, Prometheus metrics and a web page.

    from imgclf.serve import ServeSettings, create_app, run
    app = create_app("runs/ants/best.pt", ServeSettings(max_batch_size=32))   # any file open_model reads
    run(app, host="127.0.0.1", port=8000)

`imgclf serve WEIGHTS_OR_EXPORT` is the same from the command line.
"""
from __future__ import annotations

from .app import ServeSettings, create_app
from .server import bind, run

__all__ = ["ServeSettings", "create_app", "bind", "run"]
