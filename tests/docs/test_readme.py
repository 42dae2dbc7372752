"""The README is always true: .ci/run runs exactly the README's install, test and quick-start commands."""

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
