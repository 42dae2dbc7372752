"""`imgclf.cli.main` and signals: a stop while a command runs ends it through its `finally`s; one that comes once
the command has ended (torchrun's SIGTERM to a rank that has just failed on its own) changes nothing."""

from __future__ import annotations

import os
import signal

import pytest

from imgclf.cli import main as cli_main
from imgclf.core.errors import ImgclfError


class _SignalWhileSaid(ImgclfError):
    """A failure whose line brings `sig` while it is being written, as torchrun's SIGTERM reaches a rank that is
    reporting that it lost its peer."""

    def __init__(self, sig: int):
        super().__init__("the peer is gone")
        self.sig = sig

    def __str__(self) -> str:
        os.kill(os.getpid(), self.sig)
        return "the peer is gone"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_the_command_ended_changes_nothing(sig, capsys, monkeypatch):
    """The failure's own line and exit code, no Terminated or KeyboardInterrupt out of main (and a traceback)."""

    def fails(*a, **k):
        raise _SignalWhileSaid(sig)

    monkeypatch.setattr(cli_main, "dispatch", fails)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert cli_main.main(["predict", "w.pt", "images"]) == 1
    assert capsys.readouterr().err == "imgclf: error: the peer is gone\n"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # put back


@pytest.mark.parametrize(
    ("sig", "code", "line"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_while_the_command_runs_stops_it_through_its_finally(sig, code, line, capsys, monkeypatch):
    cleaned = []

    def runs(*a, **k):
        try:
            os.kill(os.getpid(), sig)
            for _ in range(10**6):  # the handler runs at the next bytecode boundary; never gets far
                pass
            raise AssertionError("the signal did not stop the command")
        finally:
            cleaned.append(True)

    monkeypatch.setattr(cli_main, "dispatch", runs)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also under a runner
    try:  # that started pytest with Ctrl-C ignored (a shell's background job)
        assert cli_main.main(["predict", "w.pt", "images"]) == code
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cleaned == [True]
    assert capsys.readouterr().err == f"imgclf: {line}\n"


def test_an_ignored_ctrl_c_stays_ignored(capsys, monkeypatch):
    """A command started with SIGINT ignored (a shell's background job) is not stopped by one."""
    ran = []

    def runs(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        ran.extend(range(1000))
        return 0

    monkeypatch.setattr(cli_main, "dispatch", runs)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli_main.main(["predict", "w.pt", "images"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(ran) == 1000 and capsys.readouterr().err == ""
