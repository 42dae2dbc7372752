"""Files appear whole or not at all: written to a temporary name in the same folder, then renamed.

A temporary name says who writes it: `.NAME.<pid>-<host>-<random>.tmp[.ext]`, where <host> is a hash of the host
name and the PID namespace (so that a PID is only ever checked where it means something). A writer killed
with SIGKILL cannot remove its temporary file; the next write of the same path (every `temp_beside`), or
`remove_stale_temps` on the folder, removes the ones whose writer is gone.

A full disk (or quota, or file size limit) while writing is one `DiskFullError` line that names the file,
with the temporary file removed and the old file left as it was.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time

from imgclf.core.errors import DiskFullError, UsageError

log = logging.getLogger(__name__)

# The random part of a temporary name: tempfile.mkstemp's alphabet and length, which `_temp_re` matches.
_RANDOM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"

# A temporary file whose writer cannot be checked here (written on another host or in another PID namespace,
# or by an imgclf from before writers were named) is stale once untouched this long: no imgclf write holds
# its temporary file for more than minutes (an export verifying its output is the longest), so a day
# never removes a live one.
FOREIGN_STALE_SECONDS = 24 * 3600

# errno values that mean "no room for this file here": (what happened, how to fix it)
_FULL = {
    errno.ENOSPC: ("no space left on device", "free some space there, or write elsewhere (--out)"),
    errno.EFBIG: (
        "file too large for its file system or the size limit (ulimit -f)",
        "raise the limit, or write to another file system (--out)",
    ),
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _FULL[errno.EDQUOT] = ("disk quota exceeded", "free some of your quota, or write elsewhere (--out)")

_PROBE_BYTES = 2**20  # more than a block on any file system in use (4 to 64 KiB), so it needs fresh blocks


@functools.cache
def _host_tag(pid_namespace: str) -> str:
    return hashlib.sha1(f"{socket.gethostname()}\0{pid_namespace}".encode()).hexdigest()[:8]


def _writer_host() -> str:
    """8 hex digits naming this host and PID namespace: two containers sharing a host name and a volume have
    different PID namespaces, and one's PID 57 says nothing about the other's."""
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # no /proc (macOS): the host name alone
        ns = ""
    return _host_tag(ns)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: never call it dead
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists and belongs to someone else
        return True
    return True


def _temp_re(base: str | None) -> re.Pattern:
    """Our temporary names, for the target named `base` (or any target): temp_beside's own naming
    (.BASE.PID-HOST-RANDOM.tmp[.ext]) and the older one without the writer (.BASE.RANDOM.tmp[.ext]);
    RANDOM is tempfile.mkstemp's 8 characters."""
    b = ".+" if base is None else re.escape(base)
    return re.compile(rf"\.(?P<base>{b})\.(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-)?[a-z0-9_]{{8}}\.tmp(?:\.[\w.-]+)?")


def temp_beside(path: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A new, empty, hidden temporary file in `path`'s folder (so that os.replace onto `path` is atomic):
    (fd, name). It gets the permissions `open(path, "w")` would give a new file (0666 less the umask, or the
    folder's default ACL), so a run's checkpoints and exports are readable like its other files: it is created
    with mode 0666 and the kernel applies the umask, which is never read here (os.umask can only be read by
    setting it, a change to the whole process that races with other threads creating files).
    The stale temporary files of earlier writers of `path` that died are removed first. `suffix` starts with
    ".tmp" (".tmp.onnx"); ".tmp" is put in front of one that does not."""
    remove_stale_temps(path)
    if not suffix.startswith(".tmp"):
        suffix = ".tmp" + suffix
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.{os.getpid()}-{_writer_host()}-"
    # as mkstemp: exclusive creation (never someone else's file or a planted link), a new name on a clash
    flags = (
        os.O_RDWR
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    for _ in range(tempfile.TMP_MAX):
        tmp = os.path.join(folder, prefix + "".join(secrets.choice(_RANDOM_CHARS) for _ in range(8)) + suffix)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no unused temporary name beside {path}")


def remove_stale_temps(folder_or_path: str) -> list[str]:
    """Remove the temporary files that `temp_beside` made and whose writer is gone: for one target path, or
    for every target in a folder. Returns the paths removed.

    Stale means: written on this host and in this PID namespace by a process that no longer exists, or,
    where the writer cannot be checked (another host, an older imgclf), untouched for FOREIGN_STALE_SECONDS.
    A temporary file of a running writer is never removed (a reused PID only keeps a stale one longer).
    Only names of temp_beside's exact form are considered; nothing else in the folder is touched."""
    p = os.path.abspath(str(folder_or_path))
    folder, base = (p, None) if os.path.isdir(p) else (os.path.dirname(p), os.path.basename(p))
    pattern = _temp_re(base)
    head = "." if base is None else f".{base}."
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet, or not readable: nothing of ours to clean
        return removed
    here, now = _writer_host(), time.time()
    for e in entries:
        if not e.name.startswith(head):
            continue
        m = pattern.fullmatch(e.name)
        if m is None or not e.is_file(follow_symlinks=False):
            continue
        try:
            if m["pid"] is not None and m["host"] == here:
                stale = not _pid_alive(int(m["pid"]))
            else:
                stale = now - e.stat(follow_symlinks=False).st_mtime > FOREIGN_STALE_SECONDS
            if stale:
                os.unlink(e.path)
                removed.append(e.path)
        except OSError as err:  # gone already (another cleaner) or not ours to remove: leave it
            log.debug("left %s: %s", e.path, err)
    for r in removed:
        log.info("removed %s, left by a writer that was stopped", r)
    return removed


def temp_dir(prefix: str) -> str:
    """A new folder in the system's temporary folder for a command's scratch files, named for its writer like
    temp_beside's files (PREFIX<pid>-<host>-RANDOM). The folders of earlier writers with the same prefix that
    were killed before they could remove theirs are removed first (only on this host and PID namespace)."""
    root, here = tempfile.gettempdir(), _writer_host()
    pattern = re.compile(rf"{re.escape(prefix)}(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-[a-z0-9_]{{8}}")
    with contextlib.suppress(OSError):
        for e in os.scandir(root):
            m = pattern.fullmatch(e.name)
            if m and m["host"] == here and e.is_dir(follow_symlinks=False) and not _pid_alive(int(m["pid"])):
                shutil.rmtree(e.path, ignore_errors=True)
                log.info("removed %s, left by a command that was stopped", e.path)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{here}-")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, need: int | None = None, **kw):
    """`with atomic_open("x.csv", newline="") as f:` - on an exception the temporary file is removed and
    `path` is left as it was. A full disk raises DiskFullError (`need`: the bytes the file will take about,
    for its message)."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full_error(e, path, tmp=tmp, need=need) if isinstance(e, Exception) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from e
        raise


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stops_deferred():
    """Ctrl-C and SIGTERM held back while the block runs and acted on as it ends, by the handlers they had: for a
    write a signal must not cut (torch.save's zip writer turns an exception raised inside it into a RuntimeError,
    "unexpected pos", instead of the KeyboardInterrupt). Only in the main thread, where Python runs its signal
    handlers; a signal that is ignored, or whose handler is not Python's to set, is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            os.kill(os.getpid(), sig)  # now, to the handler it had


def disk_full_error(
    err: BaseException, path: str, *, tmp: str | None = None, need: int | None = None
) -> DiskFullError | None:
    """A DiskFullError for `err` if it failed a write of `path` for lack of room, else None.

    The errno is found in the exception or the exceptions it was raised from (torch's zip writer turns
    ENOSPC into "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", raised while handling
    the OSError). Where a RuntimeError carries none, appending _PROBE_BYTES to the half-written `tmp` asks the
    file system itself: it fails the same way if the disk, the quota or the size limit is what stopped the write."""
    code = _full_errno(err)
    if code is None and tmp is not None and isinstance(err, RuntimeError):
        code = _probe(tmp)
    if code is None:
        return None
    sizes = [f"about {need / 2**20:.1f} MiB needed"] if need else []
    if code == errno.ENOSPC:
        with contextlib.suppress(OSError):
            sizes.append(f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.1f} MiB free")
    what, fix = _FULL[code]
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return DiskFullError(f"{what} writing {path}{detail}: {fix}", errno=code)


def _full_errno(err: BaseException | None) -> int | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _probe(tmp: str) -> int | None:
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return None
    try:
        os.write(fd, bytes(_PROBE_BYTES))
        os.fsync(fd)
    except OSError as e:
        return e.errno if e.errno in _FULL else None
    finally:
        os.close(fd)
    return None


def write_json(obj, path: str) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2)


def human_size(nbytes: float) -> str:
    """1.5 KiB, 10.8 MiB: a small export is not "0.0 MiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def user_cache_home() -> str:
    """imgclf's folder in the user's cache: $XDG_CACHE_HOME/imgclf, else ~/.cache/imgclf (decoded images, the
    CIFAR download, the precision probes each have a place under it or an environment variable of their own)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgclf")


# ------------------------------------------------------------------------------------- the user's text files


@contextlib.contextmanager
def open_text(path: str, what: str, *, fix: str = "save it as UTF-8", newline: str | None = None, error=UsageError):
    """`with open_text(path, "--config") as f:` - a text file the user gave (a YAML config, a CSV manifest, a
    list of files), read as UTF-8 (a byte order mark skipped), checked first: a file that is not UTF-8 text (a
    binary file, text in another encoding, a NUL byte) is one `error` line (a UsageError: exit 2) that names
    the file (`what` 'PATH'), the line and the byte, and says `fix`; so is a file that cannot be opened."""
    check_text(path, what, fix=fix, error=error)
    try:
        f = open(path, encoding="utf-8-sig", newline=newline)
    except OSError as e:
        raise error(f"cannot read {what} '{path}' ({e.strerror or e}): check the path and its permissions") from None
    with f:
        try:
            yield f
        except UnicodeDecodeError:  # changed since it was checked
            raise error(_not_text(path, what, fix)) from None


def check_text(path: str, what: str, *, fix: str = "save it as UTF-8", error=UsageError) -> None:
    """Refuse, before any work, a file that is not UTF-8 text (`open_text`'s message); one that cannot be read
    is left to whoever opens it."""
    if _first_non_text(path) is not None:
        raise error(_not_text(path, what, fix))


def _not_text(path: str, what: str, fix: str) -> str:
    where = _first_non_text(path)
    at = f" (line {where[0]}: byte 0x{where[1]:02x})" if where else ""
    return f"{what} '{path}' is not UTF-8 text{at}: {fix}"


def _first_non_text(path: str) -> tuple[int, int] | None:
    """(line, byte) of the first byte of `path` that is not UTF-8 or is NUL (no text holds one; UTF-16 text is
    full of them), or None; read in blocks, whatever the file's size. None too when it cannot be read."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                at, byte = block.find(b"\0"), 0
                try:
                    decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:  # e.object: the bytes held back from the last block, then this one
                    held = len(e.object) - len(block)  # an unfinished character: no newline, no NUL
                    if at < 0 or e.start - held < at:
                        at, byte = max(e.start - held, 0), e.object[e.start]
                if at >= 0:
                    return lines + block[:at].count(b"\n"), byte
                if not block:
                    return None
                lines += block.count(b"\n")
    except OSError:
        return None
