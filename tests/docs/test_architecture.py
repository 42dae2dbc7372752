"""The house stays as docs/architecture.md draws it: every package in the layering contract, every module on the
map, and the size rules of the tree (functions, modules, the CLI, the Trainer's constructor)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "imgclf"
MAP = ROOT / "docs" / "architecture.md"

MAX_FUNCTION_LINES = 60  # from `def` to the last line, docstring included
MAX_MODULE_LINES = 600
MAX_CLI_MODULE_LINES = 400
MAX_TRAINER_PARAMETERS = 6


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _packages() -> list[str]:
    return sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def _rel(p: Path) -> str:
    return p.relative_to(SRC).as_posix()


def test_every_package_is_in_the_layering_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.split("|")}
    missing = [p for p in _packages() if f"imgclf.{p}" not in named]
    assert not missing, f"packages outside the layers contract in pyproject.toml: {missing}"


def test_every_module_is_on_the_map():
    text = MAP.read_text()
    missing = [_rel(p) for p in _modules() if p.name not in ("__init__.py", "__main__.py") and f"{_rel(p)}" not in text]
    assert not missing, f"docs/architecture.md does not name these modules: {missing}"
    for package in _packages():
        assert f"{package}/" in text, f"docs/architecture.md does not name the package {package}/"


def test_no_function_is_longer_than_a_screen():
    long = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(p)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("module", _modules(), ids=_rel)
def test_module_size(module):
    limit = MAX_CLI_MODULE_LINES if _rel(module).startswith("cli/") else MAX_MODULE_LINES
    lines = len(module.read_text().splitlines())
    assert lines <= limit, f"{_rel(module)} has {lines} lines (at most {limit})"


def test_the_trainer_takes_at_most_six_arguments():
    import imgclf.training.trainer as trainer

    params = [p for p in inspect.signature(trainer.Trainer).parameters.values()]
    assert len(params) <= MAX_TRAINER_PARAMETERS, [p.name for p in params]


def test_test_modules_have_unique_names():
    # tests sit beside their package without __init__.py files: pytest imports each by its file name, so two
    # test_x.py in different folders make the second fail to collect ("import file mismatch")
    names = sorted(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_no_test_imports_the_tests_folder_as_a_package():
    # tests/ has no __init__.py: `from tests.conftest import x` works only where the checkout's root happens to be on
    # sys.path, and fails to collect in a clean clone run as the README says; pytest puts each test's folder and
    # tests/ on the path, so `from conftest import x` works everywhere
    found = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert found == []
