"""What the commands share about the console and the process: result lines on stdout that survive a closed
pipe, the exit code for one, this process's rank under torchrun, and output files checked before any work."""

from __future__ import annotations

import os
import sys

from imgclf.core.errors import ImgclfError, UsageError
from imgclf.core.options import check_output_folder

# 128 + SIGPIPE: what a shell reports for `cat` or `grep` when the reader of their output exits first (`| head`),
# so `set -o pipefail` sees the same for imgclf; 0 would claim that all the output was delivered.
EXIT_BROKEN_PIPE = 128 + 13


def stdout_to_devnull() -> None:
    """After EPIPE on stdout, point it at /dev/null, so that later prints and the interpreter's final flush do not
    raise BrokenPipeError again (Python's documented recipe, `signal` module: "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file descriptor (a test's capture): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class Stdout:
    """Result lines to stdout. When the reader has gone (EPIPE), the rest is dropped: with `keep_going` the
    command goes on quietly (it has a file to finish), else BrokenPipeError ends it (main exits 141)."""

    def __init__(self, *, keep_going: bool):
        self.keep_going, self.closed = keep_going, False

    def print(self, line: str) -> None:
        if self.closed:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            self.closed = True
            stdout_to_devnull()
            if not self.keep_going:
                raise


def rank() -> int:
    """This process's rank under torchrun (0 outside it), from the environment torchrun sets."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """The number of processes under torchrun (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched() -> bool:
    """A rank that `--nproc` started (its launcher reports a stop for every rank; compute/distributed.launch)."""
    return world_size() > 1 and os.environ.get("IMGCLF_LAUNCHED") == "1"


def check_output_file(path: str, flag: str) -> None:
    """Before any work: an output file's folder is created when it is written (as train, evaluate, export and
    samples create theirs), so it need not exist, but it must be possible to make and write."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} '{path}' is a folder: give a file name")
    check_output_folder(os.path.dirname(os.path.abspath(path)), flag)  # names the folder that is wrong


def after_stop(command: str, values: dict) -> str:
    """What to do after a run of `command` was stopped (a rank killed, the job stopped): the words of the one
    line that says so. `values`: the command's parsed options."""
    if command == "train":
        return "a training run continues from its last whole checkpoint with --resume RUN_DIR/last.pt"
    if command == "predict" and values.get("output"):
        return "run the same predict command again with --resume: it keeps the rows written and predicts the rest"
    if command == "embed" and values.get("output"):
        return "run the same embed command again with --resume: it keeps the rows written and embeds the rest"
    return f"run the same {command} command again"


def said_finished(output: str, command: str) -> None:
    """--resume of a streamed output that is already whole (predict, embed): one line on stderr, nothing to do."""
    print(
        f"imgclf: --resume: '{output}' is finished (there is no '{output}.parts' of a stopped run): nothing to do; "
        f"remove it to {command} again",
        file=sys.stderr,
    )


def check_failures(failed: int, done: int, log, where: str) -> None:
    """A streamed command's unreadable images: every one failed is an ImgclfError (exit 1), some a warning; `where`
    says where each image's error is."""
    if done and failed == done:
        raise ImgclfError(f"none of the {failed} images could be read or processed ({where})")
    if failed:
        log.warning("%d of %d images could not be read or processed (%s)", failed, done, where)
