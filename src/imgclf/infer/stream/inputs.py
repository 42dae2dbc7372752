"""The entries a streaming prediction reads, lazily and in order (`Inputs`), and the share of them each rank
predicts (`shard`): chunk i of `batch_size` consecutive entries belongs to rank i % world."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

from imgclf.compute.distributed import World
from imgclf.core.errors import UsageError
from imgclf.core.fileio import open_text
from imgclf.infer.predict import iter_paths

FILES_FROM_FIX = "save it as UTF-8 text, one image path a line"


def read_list(f):
    """The entries of a file list: one path per line; blank lines and lines starting with # skipped."""
    for line in f:
        line = line.rstrip("\r\n")
        if line.strip() and not line.startswith("#"):
            yield line


@dataclass(frozen=True)
class Inputs:
    """The entries to predict, in order: `paths` (files, and folders walked recursively), then the lines of
    `files_from` ('-': standard input). Iterating reads them lazily."""

    paths: tuple[str, ...] = ()
    files_from: str | None = None

    def __iter__(self):
        yield from iter_paths(self.paths)
        if self.files_from == "-":
            yield from read_list(sys.stdin)
        elif self.files_from is not None:
            with open_text(self.files_from, "--files-from", fix=FILES_FROM_FIX) as f:
                yield from read_list(f)

    def check(self) -> None:
        """Refuse, before any work, what cannot be read at all."""
        if not self.paths and self.files_from is None:
            raise UsageError("nothing to predict: give image files or folders, or --files-from LIST")
        if self.files_from is None or self.files_from == "-":
            return
        if not os.path.exists(self.files_from):
            raise UsageError(
                f"--files-from '{self.files_from}' not found: give a text file with one image path per line "
                "(or - to read them from standard input)"
            )
        if os.path.isdir(self.files_from):
            raise UsageError(f"--files-from '{self.files_from}' is a folder: give a text file, one image path a line")

    def survey(self) -> tuple[int | None, str | None]:
        """(entries, a digest of them) in one cheap pass that reads names only, checking every path and folder
        on the way; (None, None) when the list comes from standard input, which can be read only once."""
        self.check()
        if self.files_from == "-":
            for _ in iter_paths(self.paths):  # still checked up front
                pass
            return None, None
        digest, n = hashlib.blake2b(digest_size=16), 0
        try:
            for entry in self:
                digest.update(entry.encode("utf-8", "surrogateescape") + b"\0")
                n += 1
        except OSError as e:
            raise UsageError(f"cannot read --files-from '{self.files_from}': {e.strerror or e}") from None
        if n == 0:
            raise UsageError(f"--files-from '{self.files_from}' names no images (blank and # lines are skipped)")
        return n, digest.hexdigest()


def shard(entries, batch_size: int, world: World):
    """This rank's entries: chunk i (entries i*batch_size ... (i+1)*batch_size - 1) goes to rank i % world."""
    if world.size == 1:
        return iter(entries)
    return (e for n, e in enumerate(entries) if (n // batch_size) % world.size == world.rank)


def shard_rows(total: int, batch_size: int, world: World, rank: int | None = None) -> int:
    """How many of `total` entries rank `rank` (this one by default) predicts."""
    rank = world.rank if rank is None else rank
    chunks = -(-total // batch_size)
    mine = len(range(rank, chunks, world.size))
    last_is_mine = chunks > 0 and (chunks - 1) % world.size == rank
    return mine * batch_size - ((chunks * batch_size - total) if last_is_mine else 0)
