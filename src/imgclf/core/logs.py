"""The console logging of imgclf's own console scripts (`imgclf`, `imgclf-serve`): their messages on stderr.

Library code only logs, to `logging.getLogger(__name__)`, a child of the `imgclf` logger; a console script, which
owns its process, calls `console_logging` once to show those messages. The handler is marked, so that a second
`main()` in one process (tests, embedding callers) replaces it rather than adding another.
"""

from __future__ import annotations

import logging
import os
import sys

# MLflow (--track mlflow) configures its own logger when imported, at INFO, and retries an unreachable tracking
# server for minutes: a console script that owns its process quiets the first and shortens the second, unless the
# user set them (core/tracking.py sends from a background thread, so the retries never hold up the work)
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # imgclf's own line says what was fetched
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout holds results (--json); the URL goes to the log
}


def console_logging(verbose: bool, quiet: bool, formatter: logging.Formatter | None = None) -> None:
    """imgclf's messages on stderr: everything with `verbose`, warnings and errors only with `quiet`, else INFO."""
    root = logging.getLogger("imgclf")
    for old in list(root.handlers):
        if getattr(old, "_imgclf_cli", False):
            root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler._imgclf_cli = True
    handler.setFormatter(formatter or logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    for key, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
