"""A user's strings (file names, class names, messages that quote them) made safe for where imgclf writes them: a
CSV cell that a spreadsheet shows as text and never runs as a formula (`csv_cell`, read back by `csv_value`), and
one line of a terminal table (`one_line`).

CSV: OWASP's guidance on CSV injection. A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is
a formula to Excel, LibreOffice and Google Sheets (`=HYPERLINK(...)`, `-2+3+cmd|' /C calc'!A0`); it is written
with a `'` in front, which the spreadsheet shows as text. A plain number (`-1`, `+0.5`, a class named `-1`) is
left as it is: a spreadsheet reads it as that number, and no formula runs. Only strings from users go through
`csv_cell`; the numbers imgclf computes are written as numbers. The readers of imgclf's own CSVs (a manifest, a
--difficulty file, split.csv, an --exclude list) take the `'` off again with `csv_value`, so a file named
`=x.png` round-trips (a name that itself starts with `'` and then one of those characters cannot: it reads back
without its `'`).
"""

from __future__ import annotations

import re
import unicodedata

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value):
    """`value` as a CSV cell no spreadsheet runs as a formula: a string that starts with = + - @ tab or CR (and
    is not a plain number) gets a `'` in front; anything else is returned as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_value(cell):
    """A cell as `csv_cell` was given it: the `'` it put in front of a formula character taken off again."""
    if isinstance(cell, str) and len(cell) > 1 and cell[0] == "'" and cell[1:].startswith(FORMULA_START):
        return cell[1:]
    return cell


# Bidirectional overrides and isolates: they reorder what a terminal shows (a name that reads as another)
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def one_line(text: str) -> str:
    """`text` as one line of a terminal table, escaped as Python's repr escapes it: a backslash, newline, carriage
    return, tab, NUL and every other control character (C0, DEL, C1), line and paragraph separators and
    bidirectional overrides as backslash escapes; a byte that was not UTF-8 in a file name (Python's
    surrogateescape) as \\xNN. Printable text, accents and other scripts included, is left as it is."""
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the byte o - 0xDC00 of an undecodable name
            out.append(f"\\x{o - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)
