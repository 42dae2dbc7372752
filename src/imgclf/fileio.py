"""Files appear whole or not at all: written to a temporary name in the same folder, then renamed."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kw):
    """`with atomic_open("x.csv", newline="") as f:` - on an exception the temporary file is removed and
    `path` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(obj, path: str) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2)
