"""A user's strings (file names, class names, messages that quote them) made safe for where imgclf writes them: a
CSV cell that a spreadsheet shows as text and never runs as a formula (`csv_cell`, read back by `csv_value`),
one line of a terminal table (`one_line`), and Markdown text and code spans that show it as it is (`md_text`,
`md_code`: the model card).

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


# Markdown: characters that start emphasis, code, links, images, HTML, entities, table cells, strikethrough, math
# (GitHub's $) or an autolink (GFM's http: and e-mail @) wherever they stand; CommonMark lets a backslash escape any
# ASCII punctuation, which is then shown as it is
_MD_ANYWHERE = frozenset("\\`*_[]<>|~&$:@")
_MD_LINE_START = re.compile(r"^(?:[-+#>=]|\d+(?=[.)]))")  # a list item, heading, quote or setext line


def md_text(text) -> str:
    """`text` (a class name, a user's string) as Markdown that shows it as it is and nothing else, wherever it
    stands in a line: one line (`one_line`), the characters that start Markdown anywhere backslash-escaped, and
    those that start a block at the beginning of a line (`- `, `1.`, `#`) escaped there; "www." is kept from
    becoming a GFM link. Letters, digits, spaces, `.`, `-` and the rest are left as they read."""
    text = one_line(text)
    out = "".join("\\" + ch if ch in _MD_ANYWHERE else ch for ch in text)
    m = _MD_LINE_START.match(out)
    if m:  # escape the block marker: the character itself, or a numbered item's `.` / `)`
        end = m.end()
        out = "\\" + out if not m.group().isdigit() else out[:end] + "\\" + out[end:]
    return re.sub(r"(?i)(www)\.", r"\1\\.", out)


def md_code(text, *, in_table: bool = False) -> str:
    """`text` (a path, a command) as a Markdown code span: one line, fenced by a run of backticks longer than any
    inside it (padded with a space where it starts or ends with one). `in_table`: its `|` escaped as `\\|`, which a
    GFM table cell needs even inside a code span."""
    text = one_line(text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"
