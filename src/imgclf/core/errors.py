"""The tool's own exceptions. Each message is one line that says what is wrong and how to fix it.

`UsageError` (and its subclasses) are mistakes the user can fix by changing the command, the data or the
file they point at: the CLI prints the message and exits with code 2, with a traceback only under --verbose.
"""

from __future__ import annotations

import difflib


class ImgclfError(Exception):
    """Base class for every error imgclf raises on purpose."""

    exit_code = 1


class DiskFullError(ImgclfError):
    """No room to write a file (ENOSPC, EDQUOT, EFBIG). Exit code 1, not 2: the command was right and may
    have done hours of work before the disk filled; the machine, not the command, needs fixing."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class TrainingDiverged(ImgclfError):
    """A non-finite loss or an exploding gradient (seen with --log-histograms): the run stops, and its last.pt
    is the last good epoch. Exit code 1: the command was valid; the optimisation, not the input, went wrong."""


class RankLost(ImgclfError):
    """Under torchrun, another rank died or stopped answering within --dist-timeout: this rank stops too (exit
    code 1), and the run continues from its last.pt with --resume. Under --nproc the rank says nothing and exits
    with `launched_exit_code`: the launcher's agent, which sees which rank died, says it in one line."""

    launched_exit_code = 75


class Preempted(ImgclfError):
    """Training stopped because a stop was asked for (SIGTERM through the CLI): the run saved where it was, inside
    an epoch if need be, and continues with --resume (or --resume auto). Exit code 143 (128 + SIGTERM)."""

    exit_code = 143


class UsageError(ImgclfError):
    """A bad option, path or input: fixable by the user. Exit code 2."""

    exit_code = 2


class DataError(UsageError):
    """The data cannot be used as given (missing folder, empty class, unknown split...)."""


class CheckpointError(UsageError):
    """A weights file that is missing, unsafe, or not an imgclf checkpoint."""


class WeightsUnavailableError(UsageError):
    """Pretrained weights that cannot be had (offline and not cached)."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(e: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message, for a one-line error of our own; `empty` (default: the
    exception's type name) when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else (empty or type(e).__name__)
