"""`imgclf-serve`'s parser on the slim install: generated from serve/options.py with neither PyTorch nor PyYAML,
from modules the slim distribution ships."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src"

SLIM_HELP = textwrap.dedent(
    """
    import contextlib, io, json, sys
    sys.modules["torch"] = None  # as in the slim install: `import torch` and `import yaml` raise ImportError
    sys.modules["yaml"] = None
    from imgclf.serve.main import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["--help"])
        except SystemExit as e:
            code = e.code
    print(json.dumps({"code": code, "help": out.getvalue(),
                      "imgclf": sorted(m for m in sys.modules if m.split(".")[0] == "imgclf")}))
    """
)


def _slim_modules() -> set[str]:
    names = set()
    for line in (ROOT / "deploy" / "slim" / "MODULES").read_text().splitlines():
        line = line.strip()
        if line.endswith(".py") and not line.startswith("#"):
            names.add(line[: -len(".py")].replace("/", ".").removesuffix(".__init__"))
    return names


def test_slim_help_without_torch_or_yaml():
    res = subprocess.run(
        [sys.executable, "-c", SLIM_HELP],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["code"] == 0 and "--max-concurrency" in got["help"] and "--precision" not in got["help"]
    assert "imgclf.serve.options" in got["imgclf"]
    assert set(got["imgclf"]) <= _slim_modules(), set(got["imgclf"]) - _slim_modules()
