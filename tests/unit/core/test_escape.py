"""core/escape.py: a user's strings as CSV cells no spreadsheet runs (OWASP's CSV injection guidance) and as one
line of a terminal table (issue 22, defect 12); Markdown text and code spans (the model card)."""

from __future__ import annotations

import csv
import io

import pytest

from imgclf.core.escape import csv_cell, csv_value, md_code, md_text, one_line


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://x","y")',
        "+cmd|' /C calc'!A0",
        "-2+3+cmd|' /C calc'!A0",
        "@SUM(1,1)",
        "\t=1",
        "\r=1",
        "-x.png",
        "=",
        "-",
        "+1+1",
        "-1e5x",
    ],
)
def test_formula_cells_get_a_quote_and_read_back_as_written(text):
    cell = csv_cell(text)
    assert cell == "'" + text
    assert csv_value(cell) == text
    buf = io.StringIO(newline="")  # through the csv module both ways, as the writers and readers use it
    csv.writer(buf).writerow([cell, 1])
    assert csv_value(next(csv.reader(io.StringIO(buf.getvalue())))[0]) == text


@pytest.mark.parametrize("value", ["-1", "+0.5", "-3.25e-2", "1", "cat", "a=b", "'quoted", "", " =x", 0.5, -3, None])
def test_numbers_and_other_cells_are_left_as_they_are(value):
    """A negative number (a class named -1, a number column) stays a number: no spreadsheet runs it."""
    assert csv_cell(value) == value and csv_value(value) == value


@pytest.mark.parametrize(
    "text, shown",
    [
        ("a\nb.png", "a\\nb.png"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("nul\0.png", "nul\\0.png"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("del\x7f c1\x85", "del\\x7f c1\\x85"),
        ("back\\slash", "back\\\\slash"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("rtl\u202egnp.exe", "rtl\\u202egnp.exe"),
        ("bytes\udcff\udc80", "bytes\\xff\\x80"),  # a name that was not UTF-8 (surrogateescape)
        ("café 猫 🐱.png", "café 猫 🐱.png"),  # printable text of any script is left alone
        ("plain/path.png", "plain/path.png"),
    ],
)
def test_one_line_escapes_what_a_terminal_would_act_on(text, shown):
    assert one_line(text) == shown
    assert "\n" not in one_line(text) and one_line(text).isprintable()


@pytest.mark.parametrize(
    "name, escaped",
    [
        ("ants", "ants"),
        ("golden retriever v1.2", "golden retriever v1.2"),
        ("*bold* _it_", r"\*bold\* \_it\_"),
        ("<script>&amp;", r"\<script\>\&amp;"),
        ("a|b", r"a\|b"),
        ("[x](http://e.com)", r"\[x\](http\://e.com)"),
        ("# h", r"\# h"),
        ("- item", r"\- item"),
        ("12) twelve", r"12\) twelve"),
        ("1. one", r"1\. one"),
        ("www.e.com", r"www\.e.com"),
        ("two\nlines", r"two\\nlines"),
    ],
)
def test_md_text_escapes_what_markdown_would_read(name, escaped):
    assert md_text(name) == escaped


def test_md_code_fences_past_any_backticks():
    assert md_code("/runs/a b/best.pt") == "`/runs/a b/best.pt`"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`x`") == "`` `x` ``"
    assert md_code("a|b", in_table=True) == r"`a\|b`"
    assert md_code("x\ny") == r"`x\ny`"
