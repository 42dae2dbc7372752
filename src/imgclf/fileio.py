"""Files appear whole or not at all: written to a temporary name in the same folder, then renamed."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


# The process's umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temp_beside(path: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A new, empty, hidden temporary file in `path`'s folder (so that os.replace onto `path` is atomic):
    (fd, name). mkstemp makes it private (0600); it gets the permissions `open(path, "w")` would give a new
    file instead (0666 less the umask), so a run's checkpoints and exports are readable like its other files."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix,
                               dir=os.path.dirname(os.path.abspath(path)))
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kw):
    """`with atomic_open("x.csv", newline="") as f:` - on an exception the temporary file is removed and
    `path` is left as it was."""
    fd, tmp = temp_beside(path)
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
