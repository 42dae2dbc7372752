"""The README is always true: .ci/run runs exactly the README's install, test and quick-start commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _code_lines(text: str) -> list[str]:
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            out.append(line.strip())
    return out


def test_ci_runs_the_readme_commands():
    readme = _code_lines((ROOT / "README.md").read_text())
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd ", "apt-get "))
    ]
    install = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"'
    assert ci[0] == install and install in readme
    assert ci[1] == ".venv/bin/pytest" and ci[1] in readme
    for cmd in ci[2:]:
        assert cmd in readme, f".ci/run runs a command the README does not show: {cmd}"


def test_no_machine_paths_in_docs_or_messages():
    """Docs and messages speak of "the development venv" or a path relative to the repository, never of one
    machine's own folders (issue 22, defect 20: deployment.md named the venv by its absolute path)."""
    machine = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users|mnt|scratch)/[\w.-]")
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "src").rglob("*.py"))]
    found = [
        f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if machine.search(line)
    ]
    assert not found, "a machine's own path in docs or messages:\n" + "\n".join(found)
