"""report.html's data checks: a table per finding kind with thumbnails, everything a user's string touches
escaped; a check folder's own page (write_check_report); the contact sheets per kind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from imgclf.evaluation import report as report_mod
from imgclf.evaluation.report import write_check_report
from imgclf.evaluation.report_sections import CHECK_PER_KIND
from imgclf.studies.audit.sheets import write_sheets

HOSTILE = "<script>alert(1)</script>"
EVIL_FILE = "<img src=x onerror=alert(1)>.png"  # a file name may hold anything but a slash


def _check_folder(tmp_path, make_folder, findings: list[dict]):
    data = make_folder(tmp_path / "d", classes=("cat", "dog"), n=3, n_val=2)
    out = tmp_path / "chk"
    out.mkdir()
    report = {"data": str(data), "ok": True, "errors": [], "warnings": findings, "summary": {"images": 10}}
    (out / "check.json").write_text(json.dumps(report), encoding="utf-8")
    return data, out, report


def _section(page: str) -> str:
    return page[page.index('<section id="check">') :].split("</section>")[0]


def test_findings_are_tables_per_kind_with_thumbnails_and_escaped(tmp_path, make_folder):
    findings = [
        {
            "kind": "label",
            "paths": [f"train/cat/{EVIL_FILE}"],
            "detail": HOSTILE,
            "label": HOSTILE,
            "suggested": "dog",
            "score": 0.0123,
        },
        {
            "kind": "near-duplicate",
            "paths": ["train/cat/tr000.png", "val/cat/va000.png"],
            "detail": "2 shots",
            "group": "nd-1",
        },
        {"kind": "outlier", "paths": ["train/dog/gone.png"], "detail": "far from every class", "score": 3.5},
    ]
    data, out, _ = _check_folder(tmp_path, make_folder, findings)
    Image.new("RGB", (20, 20), (200, 0, 0)).save(data / "train" / "cat" / EVIL_FILE, format="PNG")
    page = open(write_check_report(str(out)), encoding="utf-8").read()
    sec = _section(page)
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sec and "&lt;img src=x onerror=alert(1)&gt;.png" in sec
    for kind in ("label (1 finding)", "near-duplicate (1 finding)", "outlier (1 finding)"):
        assert f"<h3>{kind}</h3>" in sec
    assert sec.count('src="data:image/') == 3  # the hostile file and the two near-duplicates; gone.png is not there
    assert "no image" in sec and "0.012" in sec and "nd-1" in sec and "<th>suggested</th>" in sec
    assert 'id="mistakes"' not in page  # a check folder: its sections alone


def test_at_most_n_findings_a_kind_and_then_how_many_more(tmp_path, make_folder):
    n = CHECK_PER_KIND + 5
    findings = [{"kind": "duplicate", "paths": [f"train/cat/x{i}.png"], "detail": "copy"} for i in range(n)]
    _, out, _ = _check_folder(tmp_path, make_folder, findings)
    sec = _section(open(write_check_report(str(out)), encoding="utf-8").read())
    assert sec.count("<tr>") == CHECK_PER_KIND + 1 and "and 5 more" in sec  # + the header row


def test_in_memory_images_come_from_the_caller(tmp_path, make_folder):
    findings = [{"kind": "label", "paths": ["digits:3", "digits:4"], "detail": "", "label": "3", "suggested": "8"}]
    _, out, report = _check_folder(tmp_path, make_folder, findings)
    images = {"digits:3": np.zeros((8, 8, 3), np.uint8)}
    sec = _section(open(write_check_report(str(out), images=images), encoding="utf-8").read())
    assert sec.count('src="data:image/png') == 1 and "no image" in sec
    sheets = write_sheets(report, str(tmp_path / "sheets"), images=images)
    assert [os.path.basename(p) for p in sheets] == ["sheet-label.png"]
    assert Image.open(sheets[0]).size[0] > 100


def test_contact_sheets_one_png_per_kind(tmp_path, make_folder):
    findings = [
        {
            "kind": "label",
            "paths": ["train/cat/tr000.png"],
            "detail": "",
            "label": "cat",
            "suggested": "dog",
            "score": 0.1,
        },
        {"kind": "near-duplicate", "paths": ["train/cat/tr000.png", "val/cat/va000.png", "nope.png"], "detail": "x"},
    ]
    _, out, report = _check_folder(tmp_path, make_folder, findings)
    sheets = write_sheets(report, str(out))
    assert sorted(os.path.basename(p) for p in sheets) == ["sheet-label.png", "sheet-near-duplicate.png"]
    for p in sheets:
        with Image.open(p) as im:
            assert im.format == "PNG"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_a_page_that_fails_leaves_no_half_written_file(tmp_path, make_folder, monkeypatch):
    _, out, _ = _check_folder(tmp_path, make_folder, [])

    def boom(f):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_mod, "render", boom)
    with pytest.raises(KeyboardInterrupt):
        write_check_report(str(out))
    assert sorted(os.listdir(out)) == ["check.json"]
