"""The console logging of imgclf's own console scripts (`imgclf`, `imgclf-serve`): their messages on stderr.

Library code only logs, to `logging.getLogger(__name__)`, a child of the `imgclf` logger; a console script, which
owns its process, calls `console_logging` once to show those messages. The handler is marked, so that a second
`main()` in one process (tests, embedding callers) replaces it rather than adding another.
"""

from __future__ import annotations

import logging
import sys


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
