"""core/options.py: an options dataclass declared with `opt` / `Opt.field()` gives argparse flags (name, type,
default, choices, range, words, bools, groups) and the checks, from the one declaration."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from imgclf.core.errors import UsageError
from imgclf.core.options import REQUIRED, Opt, Range, add_options, check_options, declared, opt, options_from

SHARED = Opt(help="images per batch", range=Range(ge=1))


@dataclass(frozen=True, kw_only=True)
class Example:
    SECTIONS = {"numbers": "size"}

    path: str = opt(help="a file", positional=True)
    mode: str = opt("fast", "how", ("fast", "slow"))
    on: bool = opt(True, "a switch that is on")
    json: bool = opt(False, "print JSON")
    tags: list[str] = opt([], "a tag; repeat for several", repeat=True)
    n: int = opt(3, "how many", ge=1)
    size: int | None = opt(None, "a size", ge=1, le=10)
    lr: float | str | None = opt(None, "a rate", gt=0, words=("auto",))
    batch_size: int = SHARED.field(8)
    need: str = opt(help="must be given")


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_options(p, Example, **kw)
    return p


def _parse(argv, **kw) -> Example:
    return options_from(Example, vars(_parser(**kw).parse_args(argv)))


def test_flags_types_and_defaults():
    o = _parse(["f.txt", "--need", "x", "--size", "4", "--lr", "AUTO", "--tags", "a", "--tags", "b", "-n", "2"])
    assert o == Example(path="f.txt", need="x", size=4, lr="auto", tags=["a", "b"], n=2)
    o = _parse(["f.txt", "--need", "x", "--no-on", "--json", "--lr", "0.5", "--batch-size", "16"])
    assert (o.on, o.json, o.lr, o.batch_size, o.mode, o.tags) == (False, True, 0.5, 16, "fast", [])
    assert _parse(["f", "--need", "x"]).tags is not _parse(["f", "--need", "x"]).tags  # a fresh list each


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "11"], "must be at least 1 and at most 10, not 11"),
        (["--lr", "-1"], "must be above 0 (or auto), not -1"),
        (["--lr", "fast"], "must be a number (or auto), not 'fast'"),
        (["-n", "1.5"], "must be a whole number, not '1.5'"),
        (["--batch-size", "0"], "must be at least 1, not 0"),
    ],
)
def test_ranges_are_checked_when_parsing(argv, message):
    with pytest.raises(argparse.ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _parser().parse_args(["f", "--need", "x", *argv])


def test_unchecked_parsing_then_check_options():
    o = _parse(["f", "--need", "x", "--size", "11"], ranges=False)
    assert o.size == 11
    with pytest.raises(UsageError, match=r"^--size must be at least 1 and at most 10, not 11$"):
        check_options(o)
    check_options(Example(path="f", need="x", lr="auto"))


def test_help_has_defaults_ranges_and_groups():
    p = _parser()
    text = " ".join(p.format_help().split())
    assert "--mode MODE how [fast]" in text and "--on, --no-on a switch that is on [True]" in text
    assert "--json print JSON --tags TAGS" in text  # an off switch shows no default
    assert "-n N how many [3] (at least 1)" in text
    assert "--batch-size BATCH_SIZE images per batch [8] (at least 1)" in text
    numbers = next(g for g in p._action_groups if g.title == "numbers")
    assert [a.dest for a in numbers._group_actions] == ["size", "lr", "batch_size", "need"]
    assert "--mode" in p.format_usage() and "--need NEED" in p.format_usage()


def test_a_shared_declaration_is_the_origin_of_its_copies():
    specs = {name: spec for name, spec, _ in declared(Example)}
    assert specs["batch_size"].origin is SHARED and specs["batch_size"].default == 8
    assert specs["n"].origin is specs["n"] and specs["need"].default is REQUIRED
    assert {name: t for name, _, t in declared(Example)}["tags"] is str
