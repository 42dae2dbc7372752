"""Importing or calling imgclf changes nothing process-wide: the umask, socket timeouts, logging levels and
handlers stay as the caller set them (the CLI may configure its own process)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import torch

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (import-time effects happen once per process); its stdout."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_importing_imgclf_never_calls_umask():
    """os.umask can only be read by setting it: a set and reset at import is a window in which another thread's
    new files get the wrong permissions."""
    out = _python("""
        import json, os
        calls = []
        real = os.umask
        os.umask = lambda mask: (calls.append(mask), real(mask))[1]
        import imgclf, imgclf.cli, imgclf.fileio, imgclf.checkpoint, imgclf.exporting, imgclf.serve.app
        print(json.dumps(calls))
    """)
    assert json.loads(out) == []


def test_new_files_get_the_umask_in_force_when_they_are_written(tmp_path, monkeypatch):
    """Checkpoints and JSON written through atomic_open get 0666 less the umask of the moment (here 0o027, set
    after imgclf was imported), and writing them does not touch the umask."""
    from imgclf.checkpoint import save_checkpoint  # imported before the umask changes
    from imgclf.fileio import write_json

    calls = []
    real = os.umask
    before = real(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: (calls.append(mask), real(mask))[1])
        write_json({"a": 1}, str(tmp_path / "r.json"))
        save_checkpoint({"w": torch.zeros(2)}, str(tmp_path / "w.pt"))
        monkeypatch.undo()
        assert real(0o027) == 0o027  # still the value set above
    finally:
        real(before)
    assert calls == []
    for name in ("r.json", "w.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name
    assert sorted(os.listdir(tmp_path)) == ["r.json", "w.pt"]  # no temporary file left
