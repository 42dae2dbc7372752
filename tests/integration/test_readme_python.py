"""The README's Python API block runs as written (its shell blocks run in .ci/run; see tests/docs/test_readme.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from shared_data import DATA, need_hym

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def python_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.startswith("```"):
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


@need_hym
def test_readme_python_api_block_runs(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no ```python block"
    # the block speaks of ../shared/data from the project root: give it the same neighbourhood in tmp_path
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "shared").symlink_to(DATA.parent, target_is_directory=True)
    for i, code in enumerate(blocks):
        r = subprocess.run(
            [sys.executable, "-c", code],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PYTHONWARNINGS": "default"},
        )
        assert r.returncode == 0, f"README python block {i} failed:\n{r.stderr[-3000:]}"
        assert "'label':" in r.stdout and "'probability':" in r.stdout  # predictions were printed
        assert "hymenoptera" in r.stdout  # and the data check's report
