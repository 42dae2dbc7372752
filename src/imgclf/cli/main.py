"""`imgclf` command line: `main(argv) -> int` parses the flags (cli/commands.py: the table of commands, each with
its options object) and runs one command, which calls one API function.

Tests call `main` in-process. Usage errors print one line and return 2; other failures print one line and return
1; tracebacks only with --verbose; Ctrl-C 130, SIGTERM 143, a closed stdout 141.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from imgclf.cli.commands import COMMANDS, build_parser, dispatch
from imgclf.cli.console import EXIT_BROKEN_PIPE, after_stop, launched, rank, stdout_to_devnull, world_size
from imgclf.core.errors import ImgclfError, Preempted, RankLost, TrainingDiverged
from imgclf.core.logs import console_logging
from imgclf.core.progress import shown

__all__ = ["COMMANDS", "build_parser", "main", "request_huge_pages", "run"]

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM (`kill`, a job scheduler, a container stopping), raised in the main thread so that every `finally`
    and `atomic_open` runs: a stopped export or training run leaves no temporary file behind."""


class _StopSignals:
    """While a command runs in the main thread, SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt (unless
    SIGINT was ignored when we started, as in a background job), so that every `finally` and `atomic_open` runs.
    Once the command has ended (`running` False), a late one is ignored: the ending is being reported already.
    (torchrun's SIGTERM to a rank that had just stopped on its own, arriving while main() put the handler back,
    raised out of main(): a traceback beside the launcher's one line.) `restore()` puts the handlers back."""

    def __init__(self):
        self.running, self.previous = True, {}
        if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
            return
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)  # `serve` sets uvicorn's
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.running:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def request_huge_pages() -> bool:
    """Ask PyTorch's CPU allocator for transparent huge pages (THP_MEM_ALLOC_ENABLE), before torch is imported.

    Freed activations above glibc's mmap threshold go back to the kernel and are faulted in and zeroed again on
    the next step, 4 KiB at a time: EfficientNet-Lite0 training at 224 px spent as much time in the kernel as in
    user code on a 2-core machine, and 2 MiB pages cut that (docs/benchmarks.md, "Where the CPU time went").
    (Keeping freed memory in the heap with mallopt was faster still but grew the heap until the OOM killer
    ended a 10-epoch fine-tune, so it is not used.) Only possible before torch's first allocation; returns
    whether the setting is in effect. IMGCLF_NO_THP=1 leaves the environment alone."""
    if os.environ.get("IMGCLF_NO_THP"):
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"


class _Format(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"warning: {msg}" if record.levelno == logging.WARNING else msg


def _terminated(command: str, values: dict) -> int:
    """SIGTERM outside a training loop's step boundary: one line (none when --nproc's launcher speaks for us)."""
    if launched():  # --nproc's launcher says what happened, in one line
        pass
    elif world_size() > 1:  # torchrun stops the ranks when one of them fails
        print(
            f"imgclf: rank {rank()} terminated (torchrun stops every rank when one fails or the job is stopped; "
            f"its report follows): {after_stop(command, values)}",
            file=sys.stderr,
        )
    else:
        print("imgclf: terminated", file=sys.stderr)
    return 128 + signal.SIGTERM


def _error(e: ImgclfError, verbose: bool) -> int:
    """imgclf's own error: one line (the traceback with --verbose), or nothing where another process says it."""
    if isinstance(e, RankLost) and launched() and not verbose:
        return e.launched_exit_code  # the launcher names the rank that was lost, in one line
    if isinstance(e, TrainingDiverged) and rank() > 0 and not verbose:
        return e.exit_code  # every rank stops at the same step with the same line: rank 0 says it
    if verbose:
        log.exception("error")
    print(f"imgclf: error: {e}", file=sys.stderr)
    return e.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        values = vars(parser.parse_args(argv))
    except SystemExit as e:
        return int(e.code or 0)
    command, nproc = values.pop("command", None), values.pop("nproc", None)
    verbose = bool(values.get("verbose", False))
    quiet = bool(values.get("quiet", False)) or rank() > 0  # under torchrun, rank 0 alone reports progress
    values |= {"verbose": verbose, "quiet": quiet}
    if not command:
        parser.print_help()
        return 2
    console_logging(verbose, quiet, _Format())
    argv = sys.argv[1:] if argv is None else list(argv)  # --nproc N runs this command line again under torchrun
    request_huge_pages()  # before the command imports torch
    stops = _StopSignals()
    try:
        try:
            with shown(not quiet):  # bars and progress lines, for this command only
                return dispatch(command, values, nproc=nproc if nproc and nproc > 1 else None, argv=argv)
        finally:
            stops.running = False  # a signal from here on is late: what follows reports how the command ended
    except Terminated:
        return _terminated(command, values)
    except Preempted as e:  # SIGTERM during training: saved at a step boundary (training/preempt.py)
        if rank() == 0 or verbose:  # every rank stops at the same step with the same line: rank 0 says it
            print(f"imgclf: {e}" if world_size() <= 1 else f"imgclf: rank {rank()}: {e}", file=sys.stderr)
        return e.exit_code
    except ImgclfError as e:
        return _error(e, verbose)
    except KeyboardInterrupt:
        if not launched():
            print("imgclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader went away (`| head -1`): stop quietly, as a tool ended by SIGPIPE
        stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except Exception as e:
        if verbose:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"imgclf: error: {type(e).__name__}: {first} (run with --verbose for the traceback)", file=sys.stderr)
        return 1
    finally:
        stops.restore()


def run() -> None:
    code = main()
    try:  # what print() left in the buffer: a reader that has gone shows up here, not in the command
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_to_devnull()
        code = EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # a Ctrl-C after the command ended: its ending has been reported
        pass
    sys.exit(code)
