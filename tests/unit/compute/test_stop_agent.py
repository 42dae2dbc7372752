"""compute/distributed.stop_agent: what the launcher does on Ctrl-C of `--nproc`. torchrun's agent is given the
signal once; a rank it leaves alive (each rank runs in a session of its own) is killed, and an agent that does not
stop is killed after STOP_SECONDS, so that a Ctrl-C never leaves a rank training on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import process_gone

from imgclf.compute import distributed

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads children from Linux /proc")

# an "agent" that starts one "rank" in a session of its own, says so, and on SIGINT exits without stopping it
# (or, with IGNORE, ignores SIGINT)
AGENT = """
import signal, subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
if sys.argv[1] == "IGNORE":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print(rank.pid, flush=True)
time.sleep(300)
"""


def _agent(mode: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", AGENT, mode], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_a_rank_the_agent_leaves_alive_is_killed():
    proc, rank = _agent("EXIT")
    distributed.stop_agent(proc, signal.SIGINT)
    assert proc.returncode is not None and process_gone(rank, wait=5)


def test_an_agent_that_does_not_stop_is_killed_with_its_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "STOP_SECONDS", 1.0)
    proc, rank = _agent("IGNORE")
    distributed.stop_agent(proc, signal.SIGINT)
    assert proc.returncode == -signal.SIGKILL and process_gone(rank, wait=5)
