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

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "src")


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (import-time effects happen once per process); its stdout."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, check=False
    )
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
        import imgclf, imgclf.cli.main, imgclf.core.fileio, imgclf.models.checkpoint, imgclf.exporting.export, imgclf.serve.app
        print(json.dumps(calls))
    """)
    assert json.loads(out) == []


def test_new_files_get_the_umask_in_force_when_they_are_written(tmp_path, monkeypatch):
    """Checkpoints and JSON written through atomic_open get 0666 less the umask of the moment (here 0o027, set
    after imgclf was imported), and writing them does not touch the umask."""
    from imgclf.core.fileio import write_json
    from imgclf.models.checkpoint import save_checkpoint  # imported before the umask changes

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


def test_importing_imgclf_leaves_logging_alone():
    """No handler, level or propagation change on any logger, the package's own included, until the CLI runs."""
    out = _python("""
        import json, logging
        import imgclf, imgclf.cli.main, imgclf.exporting.export, imgclf.serve.app, imgclf.serve.server, imgclf.evaluation.command
        loggers = {name: (lg.level, len(lg.handlers), lg.propagate) for name, lg in logging.root.manager.loggerDict.items()
                   if isinstance(lg, logging.Logger) and (lg.level or lg.handlers or not lg.propagate)}
        print(json.dumps({"root": [logging.root.level, len(logging.root.handlers)], "changed": loggers}))
    """)
    got = json.loads(out)
    assert got["root"] == [30, 0]  # WARNING, no handler: Python's own
    ours = {k: v for k, v in got["changed"].items() if k.startswith(("imgclf", "python_multipart"))}
    assert ours == {}


def test_quiet_in_one_command_does_not_silence_the_next(caplog):
    """--quiet turns progress off for its own command only: afterwards progress lines are logged again."""
    import logging

    from imgclf.cli.main import main
    from imgclf.core.progress import progress

    assert main(["models", "-q", "--json"]) == 0
    logging.getLogger("imgclf").setLevel(logging.NOTSET)  # the CLI's logging set-up, as conftest undoes it
    logging.getLogger("imgclf").propagate = True
    with caplog.at_level(logging.INFO, logger="imgclf"):
        assert list(progress(range(4), total=4, desc="step", log_every=2)) == [0, 1, 2, 3]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["step 2/4 it", "step 4/4 it"]


def test_every_module_logs_under_its_own_name():
    """Loggers named by module (imgclf.core.fileio, imgclf.serve.app, ...), children of the `imgclf` logger the CLI
    configures."""
    import importlib

    for name in (
        "cli.main",
        "core.fileio",
        "core.progress",
        "models.checkpoint",
        "evaluation.command",
        "exporting.export",
        "exporting.bench",
        "data.cache",
        "data.pipeline",
        "serve.app",
        "serve.batcher",
    ):
        module = importlib.import_module(f"imgclf.{name}")
        assert module.log.name == f"imgclf.{name}", name
