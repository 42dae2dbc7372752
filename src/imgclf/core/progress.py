"""Progress is a wrapper around an iterable; library code only logs.

A tqdm bar when stderr is a terminal; otherwise a log line every `log_every` items (none when it is None),
so CI logs and files stay readable. Both are on unless the caller turns them off for a stretch of its own code
(`with shown(False):`, what the CLI's `--quiet` does for one command); nothing is left switched off after it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

# A context variable, not a module flag: `shown` restores it on the way out, so one quiet call (or test) never
# silences the next, and a thread started elsewhere sees the default.
_shown = contextvars.ContextVar("imgclf_progress_shown", default=True)


@contextlib.contextmanager
def shown(on: bool):
    """Progress bars and lines on or off for the code inside the `with` (the CLI: off with --quiet)."""
    token = _shown.set(bool(on))
    try:
        yield
    finally:
        _shown.reset(token)


def progress(
    iterable, *, total: int | None = None, desc: str = "", unit: str = "it", log_every: int | None = None, postfix=None
):
    """Yield from `iterable`, showing progress. `postfix` is a callable returning a short status string."""
    enabled = _shown.get()
    if enabled and sys.stderr.isatty():
        bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        for i, x in enumerate(bar):
            yield x
            if postfix is not None and i % 10 == 0:
                bar.set_postfix_str(postfix(), refresh=False)
        bar.close()
        return
    t0 = time.perf_counter()
    for i, x in enumerate(iterable, start=1):
        yield x
        if log_every and (i % log_every == 0) and enabled:
            rate = i / max(time.perf_counter() - t0, 1e-9)
            extra = f" {postfix()}" if postfix is not None else ""
            log.info("%s %d/%s %s (%.1f %s/s)%s", desc, i, total if total is not None else "?", unit, rate, unit, extra)
