"""Declaring options and reading their values, for every command: an option's default, help, choices and range
in one place (`opt`), from which both its check and its --help text are made; YAML option files; the
pixel-unit values of the attack options (8/255); output folders checked before any work.

No torch here: the CLI builds every --help from these declarations.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction

import yaml

from imgclf.core.errors import UsageError
from imgclf.core.fileio import atomic_open


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


def opt(default, help: str, choices: tuple | None = None, flag: str | None = None, words: tuple = (), **bounds):
    """One option: its default, help, allowed choices, and for numbers the range (`ge`, `gt`, `le`, `lt`),
    which both the check (`check_value`) and the --help text are made from. `words`: strings a number option
    also takes (`lr: auto`), outside its range and type."""
    return field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "flag": flag,
            "words": words,
            "range": Range(**bounds) if bounds else None,
        },
    )


def out_of_range(value, rng: Range | None, words: tuple = ()) -> str | None:
    """'must be above 0, not -1' when `value` is outside `rng` (or not a finite number), else None; with
    `words`, 'must be above 0 (or auto), not -1'."""
    if rng is None or value is None:
        return None
    alt = f" (or {', '.join(words)})" if words else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number {rng}{alt}, not {value}"
    return None if value in rng else f"must be {rng}{alt}, not {value}"


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"config file '{path}' not found: pass the path of a YAML file with training options")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file '{path}' must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in raw.items()}


def save_yaml(data: dict, path: str) -> None:
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
