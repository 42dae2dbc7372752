"""`imgclf similar`: the nearest images of an `imgclf embed` index, by the model that wrote it, with distances, a
table or JSON, and a contact sheet; the approximate index kept beside the index file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import usage_error

import imgclf
import imgclf.studies.similar as sim
from imgclf.cli.main import main
from imgclf.infer.predict import expand_paths


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_best, tiny_data) -> str:
    out = tmp_path_factory.mktemp("index") / "emb.parquet"
    imgclf.embed(tiny_best, [tiny_data], out, batch_size=16)
    return str(out)


def test_each_image_finds_itself_first_then_the_nearest_in_order(tiny_best, tiny_data, index):
    queries = expand_paths([tiny_data / "test"])[::3]
    got = imgclf.similar(tiny_best, queries, index=index, k=5)
    assert [a["path"] for a in got] == queries
    for a in got:
        first = a["neighbours"][0]
        assert os.path.realpath(first["path"]) == os.path.realpath(a["path"]) and first["distance"] < 1e-3
        assert first["split"] == "test" and first["label"] == Path(a["path"]).parent.name
        dist = [n["distance"] for n in a["neighbours"]]
        assert len(dist) == 5 and dist == sorted(dist) and [n["rank"] for n in a["neighbours"]] == [1, 2, 3, 4, 5]
        assert all(
            math.isclose(n["distance"], math.sqrt(max(0, 2 - 2 * n["cosine"])), abs_tol=1e-9) for n in a["neighbours"]
        )


def test_cli_an_unreadable_query_is_an_error_row_and_the_sheet_is_drawn(tmp_path, tiny_best, tiny_data, index, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    good = expand_paths([tiny_data / "val"])[0]
    sheet = tmp_path / "sheet.png"
    argv = ["similar", tiny_best, good, str(bad), "--index", index, "-k", "3", "--sheet", str(sheet)]
    assert main([*argv, "--json", "-q"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["path"] for x in lines] == [good, str(bad)]
    assert len(lines[0]["neighbours"]) == 3 and "error" in lines[1] and "neighbours" not in lines[1]
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv[:-2], "-q"]) == 0  # the table: the query, then a line per neighbour
    out = capsys.readouterr().out.splitlines()
    assert out[0] == good and out[1].split()[:2] == ["1", "0.0000"] and out[4].startswith(f"{bad}\tERROR\t")
    assert main(["similar", tiny_best, str(bad), "--index", index, "-q"]) == 1  # nothing answered: a failure


def test_another_models_index_or_not_an_index_is_refused_in_one_line(
    tmp_path, capsys, index, tiny_data, family_checkpoint
):
    query = expand_paths([tiny_data / "val"])[0]
    other = family_checkpoint("test_tiny")  # the same family, other weights
    line = usage_error(capsys, ["similar", other, query, "--index", index])
    assert "embedded by another model" in line and "weights" in line
    plain = tmp_path / "plain.parquet"
    main(["predict", other, query, "--output", str(plain), "-q"])
    capsys.readouterr()
    assert "not written by imgclf embed" in usage_error(capsys, ["similar", other, query, "--index", str(plain)])
    assert "not found" in usage_error(capsys, ["similar", other, query, "--index", str(tmp_path / "no.parquet")])
    assert ".png" in usage_error(
        capsys, ["similar", other, query, "--index", index, "--sheet", str(tmp_path / "s.jpg")]
    )


def test_past_the_exact_size_an_hnsw_index_is_built_once_and_kept(tmp_path, tiny_best, tiny_data, index, monkeypatch):
    copy = tmp_path / "emb.parquet"
    copy.write_bytes(Path(index).read_bytes())
    queries = expand_paths([tiny_data / "test"])[:2]
    exact = imgclf.similar(tiny_best, queries, index=str(copy), k=4)
    got = imgclf.similar(tiny_best, queries, index=str(copy), k=4, exact_up_to=10)
    assert Path(f"{copy}.hnsw").exists() and json.loads(Path(f"{copy}.hnsw.json").read_text())["rows"] == 75
    assert [a["neighbours"][0]["path"] for a in got] == [a["neighbours"][0]["path"] for a in exact]

    def no_build(*args, **kw):
        raise AssertionError("built again")

    monkeypatch.setattr(sim, "approximate_index", no_build)
    assert imgclf.similar(tiny_best, queries, index=str(copy), k=4, exact_up_to=10) == got  # read back, not built
    os.utime(copy, ns=(1, 1))  # the index file changed: its kept HNSW index no longer answers for it
    with pytest.raises(AssertionError, match="built again"):
        imgclf.similar(tiny_best, queries, index=str(copy), k=4, exact_up_to=10)


def test_in_memory_neighbours_are_drawn_from_the_data_set_the_index_names():
    from sklearn.datasets import load_digits

    answers = [{"path": "q.png", "neighbours": [{"path": "digits:5"}, {"path": "digits:1796"}]}]
    pixels = sim.in_memory_pixels(answers, {"data": "digits", "data_root": None})
    grey = np.rint(load_digits().images[5] * (255.0 / 16.0)).astype(np.uint8)
    assert set(pixels) == {"digits:5", "digits:1796"} and np.array_equal(pixels["digits:5"][..., 0], grey)
    assert sim.in_memory_pixels(answers, {"data": None}) == {}
