"""Declaring options and reading their values, for every command: an option's default, help, choices and range
in one place (`opt`, or a shared `Opt` reused with `.field()`), from which its argparse flag, its check and its
--help text are all made (`add_options`); YAML option files; the pixel-unit values of the attack options (8/255);
output folders checked before any work.

A command's options are a dataclass of such fields (`TrainConfig` for train, `ServeOptions` for serve, the CLI's
per-command objects in cli/options.py); the options several commands share are declared once in
core/shared_options.py. No torch here, and no YAML until a file is read: the CLI builds every --help from these
declarations, and the slim server (no PyTorch, no PyYAML) builds `imgclf-serve`'s parser from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

from imgclf.core.errors import UsageError
from imgclf.core.fileio import atomic_open, open_text


@dataclass(frozen=True)
class Range:
    """The values a number may take: `Range(gt=0)` is above 0, `Range(ge=0, lt=1)` at least 0 and below 1."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, v) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )

    def __str__(self) -> str:
        def num(v):
            return str(v) if isinstance(v, int) else f"{v:g}"

        parts = [
            f"at least {num(self.ge)}"
            if self.ge is not None
            else f"above {num(self.gt)}"
            if self.gt is not None
            else "",
            f"at most {num(self.le)}"
            if self.le is not None
            else f"below {num(self.lt)}"
            if self.lt is not None
            else "",
        ]
        return " and ".join(p for p in parts if p)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()  # the default of an option that must be given (a positional, `--format`)
_KEEP = object()  # Opt.field(): the declaration's own default


@dataclass(frozen=True)
class Opt:
    """One option's declaration. Its flag is made from the field's name (`batch_size` -> `--batch-size`, a
    one-letter name -> `-n`) and its value type from the field's annotation (`int | None` -> int, `list[str]`
    -> str, repeated); `help` may be a function, called when --help is built (export's --format lists the
    format table as it is then). `base`: the shared declaration this one adapts (see `field`)."""

    default: typing.Any = REQUIRED
    help: str | Callable[[], str] = ""
    choices: tuple | None = None
    words: tuple = ()  # strings a number option also takes (`--lr auto`), outside its range and type
    range: Range | None = None
    metavar: str | None = None
    short: str | None = None  # a one-letter spelling as well: "-v" for --verbose
    positional: bool = False
    nargs: str | None = None  # of a positional: "*" or "+"
    repeat: bool = False  # the flag may be given several times, each value appended (--exclude A --exclude B)
    base: Opt | None = None

    def field(self, default=_KEEP, **changes):
        """This declaration as a dataclass field; with a `default` or other `changes` (a help of its own), a
        copy that names this one as its `base`, so a test can tell that every --device is the one declared."""
        if default is not _KEEP:
            changes["default"] = default
        spec = dataclasses.replace(self, base=self.base or self, **changes) if changes else self
        meta = {"opt": spec, "help": spec.help, "choices": spec.choices, "words": spec.words, "range": spec.range}
        if spec.default is REQUIRED:
            return dataclasses.field(metadata=meta)
        if isinstance(spec.default, list):  # a list default: a fresh one per object
            return dataclasses.field(default_factory=lambda d=spec.default: list(d), metadata=meta)
        return dataclasses.field(default=spec.default, metadata=meta)

    @property
    def origin(self) -> Opt:
        """The declaration this one comes from: its `base`, else itself."""
        return self.base or self


def opt(default=REQUIRED, help: str = "", choices: tuple | None = None, words: tuple = (), **kw):
    """One option as a dataclass field: its default, help, allowed choices, and for numbers the range (`ge`,
    `gt`, `le`, `lt`), which both the check and the --help text are made from. Other keywords are `Opt`'s
    (`metavar`, `short`, `positional`, `nargs`, `repeat`)."""
    bounds = {k: kw.pop(k) for k in ("ge", "gt", "le", "lt") if k in kw}
    return Opt(default, help, choices, words, Range(**bounds) if bounds else None, **kw).field()


def out_of_range(value, rng: Range | None, words: tuple = ()) -> str | None:
    """'must be above 0, not -1' when `value` is outside `rng` (or not a finite number), else None; with
    `words`, 'must be above 0 (or auto), not -1'."""
    if rng is None or value is None:
        return None
    alt = f" (or {', '.join(words)})" if words else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number {rng}{alt}, not {value}"
    return None if value in rng else f"must be {rng}{alt}, not {value}"


# ------------------------------------------------------------------------------------------ options -> flags


def value_type(annotation) -> type:
    """The type a flag's text is converted to: int for `int | None`, str for `list[str]`, float for
    `float | str | None` (the first one named)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple):
        return args[0]
    return value_type(args[0]) if args else annotation


def declared(cls) -> Iterator[tuple[str, Opt, type]]:
    """(name, declaration, value type) of each option of the dataclass `cls`, in order; fields that are not
    options (a value the command fills in itself) are left out."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "opt" in f.metadata:
            yield f.name, f.metadata["opt"], value_type(hints[f.name])


def flag_of(name: str) -> str:
    """The flag of option `name`: `--batch-size` for batch_size, `-n` for n."""
    return "-" + name if len(name) == 1 else "--" + name.replace("_", "-")


def number(t: type, rng: Range | None = None, words: tuple = ()):
    """An argparse `type` for an int or float flag that refuses values outside the range at parse time: one
    line, exit 2, before any work. `words` are strings it takes as well (`--lr auto`)."""
    alt = f" (or {', '.join(words)})" if words else ""

    def parse(text: str):
        if text.strip().lower() in words:
            return text.strip().lower()
        try:
            value = t(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'a whole number' if t is int else 'a number'}{alt}, not '{text}'"
            ) from None
        problem = out_of_range(value, rng, words)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = t.__name__
    return parse


def help_text(spec: Opt, switch: bool = False) -> str:
    """The help line: the declared help, then the default in brackets (not for an off switch or an empty
    list), then the range in parentheses: "images per batch [256] (at least 1)"."""
    text = spec.help() if callable(spec.help) else spec.help
    if not switch and spec.default not in (None, REQUIRED) and not isinstance(spec.default, list):
        text += f" [{spec.default}]"
    return text + (f" ({spec.range})" if spec.range else "")


def add_option(p, name: str, spec: Opt, t: type, *, negatable: bool = False, ranges: bool = True) -> None:
    """One option as an argparse argument of `p` (a parser or an argument group). An unset flag is not in the
    parsed namespace (argparse.SUPPRESS), so the options object keeps its own default. A bool is a switch
    (`--json`), or `--x/--no-x` when it is on by default or `negatable` (options a YAML file may set).
    `ranges=False` converts numbers without checking them (`check_options` does, after parsing)."""
    convert = number(t, spec.range if ranges else None, spec.words) if t in (int, float) else t
    if spec.positional:
        kw = {"nargs": spec.nargs} if spec.nargs else {}
        if spec.default is not REQUIRED:
            kw["default"] = spec.default
        p.add_argument(name, type=convert, metavar=spec.metavar, help=help_text(spec), **kw)
        return
    flags = ([spec.short] if spec.short else []) + [flag_of(name)]
    if t is bool:
        switch = not (negatable or spec.default is True or spec.default is None)  # None: neither given
        action = "store_true" if switch else argparse.BooleanOptionalAction
        p.add_argument(*flags, action=action, default=argparse.SUPPRESS, help=help_text(spec, switch))
        return
    p.add_argument(
        *flags,
        type=convert,
        choices=spec.choices,
        action="append" if spec.repeat else "store",
        required=spec.default is REQUIRED,
        metavar=spec.metavar or name.upper(),
        default=argparse.SUPPRESS,
        help=help_text(spec),
    )


def add_options(parser, cls, *, negatable: bool = False, ranges: bool = True, skip=()) -> None:
    """Every option of the dataclass `cls` as a flag of `parser` (those named in `skip` left out), in
    declaration order. `cls.SECTIONS` ({title: first option}) starts an argument group in --help at each
    named option; options before the first section, and positionals, stay in the parser's own lists."""
    starts = {first: title for title, first in getattr(cls, "SECTIONS", {}).items()}
    group = parser
    for name, spec, t in declared(cls):
        if name in starts:
            group = parser.add_argument_group(starts[name])
        if name not in skip:
            add_option(parser if spec.positional else group, name, spec, t, negatable=negatable, ranges=ranges)


def options_from(cls, values: dict):
    """An options object of `cls` from parsed values: the keys that are its options (the others belong to
    another object, or to the command line itself); the options not given keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def check_options(obj) -> None:
    """Each option of `obj` against its declared range: a UsageError naming the flag, for values that were not
    checked when parsed (`add_option(ranges=False)`) or were set in Python."""
    for name, spec, _ in declared(type(obj)):
        value = getattr(obj, name)
        if value in spec.words:
            continue
        problem = out_of_range(value, spec.range, spec.words)
        if problem:
            raise UsageError(f"{flag_of(name)} {problem}")


# ------------------------------------------------------------------------------------------------ files


def load_yaml(path: str) -> dict:
    import yaml  # noqa: PLC0415 - not in the slim install, whose imgclf-serve builds its parser from this module

    if not os.path.isfile(path):
        raise UsageError(f"config file '{path}' not found: pass the path of a YAML file with training options")
    try:
        with open_text(path, "config file", fix="save it as UTF-8 text (YAML)") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file '{path}' must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in raw.items()}


def save_yaml(data: dict, path: str) -> None:
    import yaml  # noqa: PLC0415 - not in the slim install (see load_yaml)

    with atomic_open(path) as f:
        yaml.safe_dump(data, f, sort_keys=False)


def check_output_folder(path: str, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be made: `path` may not exist yet (it is created,
    parents too, when the command writes), but its nearest existing ancestor must be a folder we can write in."""
    up = os.path.abspath(path)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise UsageError(f"{flag} '{path}': '{up}' is a file, not a folder; choose another path")
    if not os.access(up, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} '{path}': no permission to write in '{up}'; choose another path")


# ---------------------------------------------------------------------------------- pixel-unit values


def parse_eps(text: str) -> list[float]:
    """'1/255,2/255,0.03' -> [1/255, 2/255, 0.03]: fractions or decimals, each in [0, 1] (pixel units)."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(Fraction(part)) if "/" in part else float(part)
        except (ValueError, ZeroDivisionError):
            raise UsageError(
                f"--eps '{part}' is not a number: give fractions or decimals, as in 8/255 or 0.03"
            ) from None
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise UsageError(
                f"--eps {part} is outside [0, 1]: eps is in pixel units of the [0, 1] image (8/255 is 0.031)"
            )
        values.append(value)
    if not values:
        raise UsageError("--eps is empty: give one or more values, as in 1/255,2/255,4/255,8/255")
    return sorted(set(values))


def _one_pixel_value(text: str, flag: str, example: str, extra: str = "") -> float:
    """One value in (0, 1] in pixel units, as parse_eps reads it, or a one-line usage error naming `flag`."""
    values = parse_eps(text)
    if len(values) != 1 or values[0] <= 0:
        raise UsageError(f"{flag} '{text}' must be one value above 0, as in {example}{extra}")
    return values[0]


def adv_eps(text: str) -> float:
    """--adv-eps as a number: one value in (0, 1] (8/255 or 0.03)."""
    return _one_pixel_value(text, "--adv-eps", "8/255 or 0.03")


def adv_step(text: str) -> float | None:
    """--adv-step as a number, or None (empty: the attack's own default)."""
    if not text:
        return None
    return _one_pixel_value(text, "--adv-step", "10/255 or 0.04", " (or leave it out)")
