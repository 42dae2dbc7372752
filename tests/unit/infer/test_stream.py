"""`imgclf predict` at scale: streamed outputs (CSV, JSON lines, JSON, Parquet), --files-from, --resume after a
kill, and torchrun shards merged into the one output a single process writes."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import imgclf
import imgclf.infer.predict
from imgclf.cli.main import main
from imgclf.core.escape import csv_value
from imgclf.core.multilabel import split_labels
from imgclf.infer.predict import Predictor, expand_paths, iter_paths
from imgclf.infer.stream.rows import layout_for, records
from imgclf.infer.stream.work import LineWork

SRC = str(Path(imgclf.__file__).resolve().parents[1])


def _images(tiny_data) -> list[str]:
    return expand_paths([tiny_data])


def read_output(path) -> list[dict]:
    """Any output as the Predictor's result dicts (CSV/Parquet columns turned back into `top_k`, or into a
    multi-label model's `labels` and `scores`)."""
    path = str(path)
    if path.endswith(".json"):
        return json.loads(Path(path).read_text())
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in Path(path).read_text().splitlines()]
    if path.endswith(".parquet"):
        rows = pq.read_table(path).to_pylist()
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            if not r["error"] and "labels" not in r:
                r["index"], r["probability"] = int(r["index"]), float(r["probability"])
                r["top_k_labels"] = json.loads(r["top_k_labels"])
                r["top_k_probabilities"] = json.loads(r["top_k_probabilities"])
    if rows and "labels" in rows[0]:
        return [_multilabel_result(r) for r in rows]
    out = []
    for r in rows:
        if r["error"]:
            out.append({"path": r["path"], "error": r["error"]})
            continue
        tk = [{"label": a, "probability": b} for a, b in zip(r["top_k_labels"], r["top_k_probabilities"])]
        out.append({k: r[k] for k in ("path", "label", "index", "probability")} | {"top_k": tk})
    return out


def _multilabel_result(r: dict) -> dict:
    """A multi-label row (CSV: labels "a|b" and score_LABEL columns; Parquet: a list and a struct) as a result."""
    if r["error"]:
        return {"path": r["path"], "error": r["error"]}
    if isinstance(r["labels"], list):  # Parquet
        return {"path": r["path"], "labels": r["labels"], "scores": r["scores"]}
    # csv_value: the ' that keeps a spreadsheet from running a cell as a formula, as a reader takes it off
    scores = {csv_value(k).removeprefix("score_"): float(v) for k, v in r.items() if csv_value(k).startswith("score_")}
    return {"path": r["path"], "labels": split_labels(csv_value(r["labels"])), "scores": scores}


def _cli(*argv) -> list[str]:
    return ["predict", *map(str, argv), "--device", "cpu"]


# ----------------------------------------------------------------------------------------------- inputs


def test_folders_are_walked_in_sorted_path_order(tmp_path, image_of_class):
    """The lazy walk gives the order of the sorted full paths, as expand_paths always did ("a.png" < "a/x.png"
    < "a0.png": "." and "-" sort before "/", "0" after it)."""
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "r"
    names = ["a.png", "a-b/x.png", "a/x.png", "a/y/z.png", "a0.png", "a.b/c.png", "B.png", ".hidden.png", "b/.h/x.png"]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        image_of_class(0, 8, rng=rng).save(root / n)
    (root / "notes.txt").write_text("x")
    found = [os.path.join(d, f) for d, ds, fs in os.walk(root) for f in fs]
    want = sorted(p for p in found if "/." not in p and p.endswith(".png"))
    assert list(iter_paths([root])) == want
    assert len(want) == len(names) - 2


def test_predict_iter_reads_its_input_lazily(tiny_best, tiny_data):
    # an endless input: only a lazy reader returns
    pred = Predictor(tiny_best, device="cpu", batch_size=4)
    got = list(itertools.islice(pred.predict_iter(itertools.cycle(_images(tiny_data)[:3]), top_k=2), 10))
    assert [g["path"] for g in got] == (_images(tiny_data)[:3] * 4)[:10]


# ----------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("ext", ["csv", "jsonl", "json", "parquet"])
def test_each_format_round_trips(tmp_path, capsys, tiny_best, tiny_data, ext):
    out = tmp_path / "sub" / f"preds.{ext}"
    # --part-rows 8: several Parquet parts, merged
    assert main(_cli(tiny_best, tiny_data, "--output", out, "--batch-size", "4", "--top-k", "2", "--part-rows", 8)) == 0
    printed = capsys.readouterr().out.splitlines()
    want = Predictor(tiny_best, device="cpu", batch_size=4).predict(_images(tiny_data), top_k=2)
    assert read_output(out) == want  # same rows, same order, the same values
    assert len(printed) == len(want)  # stdout still gets its lines
    assert sorted(os.listdir(out.parent)) == [out.name]  # the parts are gone


def test_csv_is_one_record_per_path_even_with_newlines_and_quotes(tmp_path, tiny_best, tiny_data):
    folder = tmp_path / "odd"
    folder.mkdir()
    src = _images(tiny_data)[0]
    names = ['a "quoted", name.png', "two\nlines.png", "plain.png"]
    for n in names:
        os.symlink(src, folder / n)
    out = tmp_path / "o.csv"
    assert main(_cli(tiny_best, folder, "--output", out, "-q")) == 0
    assert [r["path"] for r in read_output(out)] == sorted(str(folder / n) for n in names)


def test_files_from_reads_list_after_paths_and_skips_comments(tmp_path, tiny_best, tiny_data, monkeypatch):
    images = _images(tiny_data)
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\n\n" + "\n".join(images[5:9]) + "\n   \n" + str(tmp_path / "gone.png") + "\r\n")
    out = tmp_path / "o.jsonl"
    assert main(_cli(tiny_best, images[0], "--files-from", lst, "--output", out, "-q")) == 0
    rows = read_output(out)
    assert [r["path"] for r in rows] == [images[0], *images[5:9], str(tmp_path / "gone.png")]
    assert "error" in rows[-1] and all("label" in r for r in rows[:-1])
    # the same list on standard input
    monkeypatch.setattr(sys, "stdin", io.StringIO(lst.read_text()))
    out2 = tmp_path / "o2.jsonl"
    assert main(_cli(tiny_best, images[0], "--files-from", "-", "--output", out2, "-q")) == 0
    assert read_output(out2) == rows


def test_python_api(tmp_path, tiny_best, tiny_data):
    seen = []
    r = imgclf.predict_files(
        tiny_best, [tiny_data / "val"], tmp_path / "p.parquet", device="cpu", top_k=1, on_row=seen.append
    )
    assert r["rows"] == r["predicted"] == r["entries"] == len(seen) == 18 and r["errors"] == r["resumed"] == 0
    assert read_output(tmp_path / "p.parquet") == seen
    # a Predictor works as well, and keeps its own batch size
    pred = Predictor(tiny_best, device="cpu", batch_size=7)
    r = imgclf.predict_files(pred, tiny_data / "val", tmp_path / "p.csv", batch_size=4, top_k=1)
    assert pred.batch_size == 7 and [x["path"] for x in read_output(tmp_path / "p.csv")] == [x["path"] for x in seen]


# ----------------------------------------------------------------------------------------------- resume


def test_line_work_keeps_whole_chunks_and_drops_a_torn_line(tmp_path):
    work = LineWork(str(tmp_path), 0, quoted=True)
    work.open()
    rows = [{"path": f'p{i}\n,"x".png', "error": "e"} for i in range(7)]
    work.add_chunk(rows[:3])
    work.add_chunk(rows[3:6])
    work.add_chunk(rows[6:])
    work.close()
    with open(work.path, "ab") as f:
        f.write(b'"p7\n,""x"".png",,,,')  # a kill in the middle of the next row
    assert LineWork(str(tmp_path), 0, quoted=True).keep_whole_chunks(3) == 6
    with open(work.path, "rb") as f:
        kept = list(records(f, quoted=True))
    assert len(kept) == 7  # the header and two chunks of 3
    assert list(csv.reader(io.StringIO(b"".join(kept[1:]).decode(), newline="")))[5][0] == rows[5]["path"]


def _linked(tmp_path, tiny_data, n: int) -> list[str]:
    """n distinct paths (links to the tiny images), so that "each path once" can be checked."""
    folder = tmp_path / "links"
    folder.mkdir()
    images = _images(tiny_data)
    out = []
    for i in range(n):
        link = folder / f"l{i:03d}{Path(images[i % len(images)]).suffix}"
        os.symlink(images[i % len(images)], link)
        out.append(str(link))
    return out


def _env(**more) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **more)
    env.pop("WORLD_SIZE", None)
    return env


def _rows_written(out: Path, ext: str) -> int:
    parts = Path(str(out) + ".parts")
    if not parts.exists():
        return 0
    if ext == "parquet":
        return sum(pq.ParquetFile(p).metadata.num_rows for p in parts.glob("part-*.parquet"))
    work = parts / f"rank-000.{ext}"
    return max(0, work.read_bytes().count(b"\n") - (ext == "csv")) if work.exists() else 0


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_resume_after_sigkill_writes_each_path_once(tmp_path, tiny_best, tiny_data, monkeypatch, ext):
    """SIGKILL mid-run (the process waits for more of its list on stdin), then --resume: every path once, and
    the rows equal an uninterrupted run's."""
    paths = _linked(tmp_path, tiny_data, 60)
    out = tmp_path / f"o.{ext}"
    argv = _cli(tiny_best, "--files-from", "-", "--output", out, "--batch-size", 4, "--part-rows", 8, "-q")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgclf", *argv], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=_env()
    )
    try:
        proc.stdin.write("".join(p + "\n" for p in paths[:40]).encode())
        proc.stdin.flush()
        deadline = time.monotonic() + 300  # a guard against a hang, not a speed limit
        while _rows_written(out, ext) < 16 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and _rows_written(out, ext) >= 16
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()  # no half-written output
    if ext == "csv":
        with open(Path(str(out) + ".parts") / "rank-000.csv", "ab") as f:
            f.write(paths[38].encode() + b",do")  # as if killed in the middle of a row
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(p + "\n" for p in paths)))
    assert main([*argv, "--resume"]) == 0
    got = read_output(out)
    assert [r["path"] for r in got] == paths
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(p + "\n" for p in paths)))
    assert main(_cli(tiny_best, "--files-from", "-", "--output", tmp_path / f"ref.{ext}", "--batch-size", 4, "-q")) == 0
    assert got == read_output(tmp_path / f"ref.{ext}")
    assert not Path(str(out) + ".parts").exists()


def test_an_error_keeps_the_rows_done_and_resume_finishes(capsys, tmp_path, tiny_best, tiny_data, monkeypatch):
    calls = []
    real = imgclf.infer.predict.Predictor.logits

    def logits(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("the model broke")
        return real(self, batch)

    monkeypatch.setattr(imgclf.infer.predict.Predictor, "logits", logits)
    out = tmp_path / "o.parquet"
    argv = _cli(tiny_best, tiny_data / "val", "--output", out, "--batch-size", 4, "-q")
    assert main(argv) == 1
    assert "stopped after 8 of 18 images" in capsys.readouterr().err
    assert len(read_output(out)) == 8  # usable now
    assert main(argv) == 2  # the rows of the stopped run are not overwritten without --resume
    assert "pass --resume" in capsys.readouterr().err
    monkeypatch.setattr(imgclf.infer.predict.Predictor, "logits", real)
    assert main([*argv, "--resume"]) == 0
    assert read_output(out) == Predictor(tiny_best, device="cpu", batch_size=4).predict(
        _images(tiny_data / "val"), top_k=5
    )


# ----------------------------------------------------------------------------------------------- torchrun


def _row(i: int) -> dict:
    if i % 5 == 4:
        return {"path": f"p{i}.png", "error": "cannot be read"}
    tk = [{"label": "b", "probability": 0.75 - i / 1000}, {"label": "a", "probability": 0.25 + i / 1000}]
    return {"path": f"p{i}.png", "label": "b", "index": 1, "probability": 0.75 - i / 1000, "top_k": tk}


def _ml_row(i: int) -> dict:
    """A multi-label result (labels "b", "=a" and "c,d": a formula start and a comma in names; sets of none, one
    or two of them), or an error."""
    if i % 5 == 4:
        return {"path": f"p{i}.png", "error": "cannot be read"}
    scores = {"b": i / 16, "=a": (i % 3) / 2, "c,d": 0.25}
    return {"path": f"p{i}.png", "labels": [c for c, v in scores.items() if v >= 0.5], "scores": scores}


@pytest.mark.parametrize("task", ["single", "multilabel"])
@pytest.mark.parametrize("ext", ["csv", "jsonl", "json", "parquet"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_rows_merge_in_input_order(tmp_path, ext, world, task):
    """Each rank's chunks (chunk i on rank i % world) merge back into the input's order, whatever the format, with
    a single-label or a multi-label model's columns."""
    from imgclf.compute.distributed import World
    from imgclf.infer.stream.inputs import shard
    from imgclf.infer.stream.job import Job
    from imgclf.infer.stream.merge import merge

    make = _row if task == "single" else _ml_row
    rows, batch = [make(i) for i in range(17)], 3  # 6 chunks, the last of 2 rows
    layout = layout_for(task, ["b", "=a", "c,d"])
    folder = tmp_path / f"o.{ext}.parts"
    folder.mkdir()
    sizes = []
    for rank in range(world):
        job = Job(None, str(tmp_path / f"o.{ext}"), ext, {}, World(rank, world), False, layout=layout)
        work = job.work(part_rows=4)
        work.open()
        mine = list(shard(rows, batch, World(rank, world)))
        for start in range(0, len(mine), batch):
            work.add_chunk(mine[start : start + batch])
        work.close()
        sizes.append(work.rows)
    merge(str(folder), ext, sizes, batch, str(tmp_path / f"o.{ext}"), part_rows=4, layout=layout)
    got = read_output(tmp_path / f"o.{ext}")
    if ext == "parquet":  # stored as float32
        for g, r in zip(got, rows):
            if "error" not in r and task == "multilabel":
                assert g["scores"] == pytest.approx(r["scores"], rel=1e-7)
                g["scores"] = r["scores"]
            elif "error" not in r:
                assert g["probability"] == pytest.approx(r["probability"], rel=1e-7)
                g["probability"] = r["probability"]
                g["top_k"] = r["top_k"]
    assert got == rows


def test_torchrun_two_ranks_merge_into_the_single_process_output(tmp_path, tiny_best, tiny_data):
    ext = "parquet"
    # 76 entries in batches of 5: 16 chunks, the last (one row) on rank 1; one entry cannot be read
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*_images(tiny_data), str(tmp_path / "gone.png")]) + "\n")
    argv = _cli(tiny_best, "--files-from", lst, "--batch-size", 5, "--part-rows", 10, "-q")
    one = tmp_path / f"one.{ext}"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the threads of each rank (torchrun's OMP_NUM_THREADS=1): the same kernels run
    try:
        assert main([*argv, "--output", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    env = _env(OMP_NUM_THREADS="1")
    two = tmp_path / f"two.{ext}"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    res = subprocess.run(
        [*run, "-m", "imgclf", *argv, "--output", two], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert read_output(two) == read_output(one)  # same rows, same order, equal values
    assert len(read_output(two)) == 76 and "error" in read_output(two)[-1]
    assert sorted(os.listdir(tmp_path)) == sorted(["list.txt", one.name, two.name])


def test_torchrun_refusals_before_any_work(tmp_path, tiny_best, tiny_data, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for argv, words in (
        (_cli(tiny_best, tiny_data), "needs --output"),
        (_cli(tiny_best, "--files-from", "-", "--output", tmp_path / "o.csv"), "not -"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, tiny_best, tiny_data, capsys):
    existing = tmp_path / "done.csv"
    existing.write_text("path\n")
    other = tmp_path / "other.csv"
    assert main(_cli(tiny_best, tiny_data / "val", "--output", other, "--batch-size", 4, "-q")) == 0
    capsys.readouterr()
    os.makedirs(str(other) + ".parts")  # as a stopped run would leave it, but without its manifest
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    cases = [
        (_cli(tiny_best, "--files-from", tmp_path / "missing.txt"), "not found"),
        (_cli(tiny_best, "--files-from", tmp_path), "is a folder"),
        (_cli(tiny_best, "--files-from", tmp_path / "empty.txt"), "names no images"),
        (_cli(tiny_best), "nothing to predict"),
        (_cli(tiny_best, tiny_data, "--output", tmp_path / "o.txt"), "must end in .csv or .json"),
        (_cli(tiny_best, tiny_data, "--output", existing), "exists"),
        (_cli(tiny_best, tiny_data, "--resume"), "--resume continues an --output"),
        (_cli(tiny_best, tiny_data, "--output", other, "--resume"), "not a stopped imgclf predict run"),
    ]
    before = sorted(os.listdir(tmp_path))
    for argv, words in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert words in err and len(err.splitlines()) == 1 and captured.out == "", (argv, err)
    assert sorted(os.listdir(tmp_path)) == before and existing.read_text() == "path\n"


def test_resume_of_a_finished_run_is_a_no_op_that_says_so(tmp_path, tiny_best, tiny_data, capsys):
    """Issue 22: a retry loop may run a finished `predict --resume` again: exit 0, one line saying it is finished,
    OUTPUT untouched (it used to be refused with exit 2)."""
    out = tmp_path / "o.csv"
    argv = _cli(tiny_best, tiny_data / "val", "--output", out, "--batch-size", 4, "-q")
    assert main(argv) == 0
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines() == [
        f"imgclf: --resume: '{out}' is finished (there is no '{out}.parts' of a stopped run): nothing to do; remove "
        "it to predict again"
    ]
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before and sorted(os.listdir(tmp_path)) == ["o.csv"]
    r = imgclf.predict_files(tiny_best, [tiny_data / "val"], out, batch_size=4, resume=True)
    assert r["finished"] and r["predicted"] == 0


def test_resume_refuses_a_different_command(tmp_path, tiny_best, tiny_data, capsys, monkeypatch):
    out = tmp_path / "o.jsonl"
    argv = _cli(tiny_best, tiny_data / "val", "--output", out, "--batch-size", 4, "-q")
    real = imgclf.infer.predict.Predictor.logits
    monkeypatch.setattr(
        imgclf.infer.predict.Predictor, "logits", lambda self, b: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    assert main(argv) == 130
    monkeypatch.setattr(imgclf.infer.predict.Predictor, "logits", real)
    capsys.readouterr()
    for change, words in (
        (["--batch-size", "8"], "--batch-size 4, this one 8"),
        (["--top-k", "2"], "--top-k 5, this one 2"),
        ([str(tiny_data / "train")], "PATHs"),
    ):
        assert main([*argv, *change, "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    manifest = tmp_path / "o.jsonl.parts" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"version": 2', '"version": 1'))  # a stopped run of an older imgclf
    assert main([*argv, "--resume"]) == 2
    assert "another version of imgclf predict" in capsys.readouterr().err
    manifest.write_text(text)
    assert main([*argv, "--resume"]) == 0
    assert len(read_output(out)) == 18


# ----------------------------------------------------------------------------------------------- multi-label


def _approx_scores(got: list[dict], want: list[dict]) -> None:
    """Parquet stores scores as float32: equal to the results within float32 rounding, then taken as theirs."""
    for g, w in zip(got, want):
        if "scores" in w:
            assert g["scores"] == pytest.approx(w["scores"], rel=1e-6)
            g["scores"] = w["scores"]


def test_multilabel_rows_in_every_format(tmp_path, capsys, multilabel_ckpt, multilabel_csv):
    """A multi-label model: every format holds each image's label set and every label's score, as the Predictor
    gives them (its thresholds 0.5, 0.4, 0.6); stdout shows the set and the scores."""
    images = multilabel_csv.parent / "img"
    want = Predictor(multilabel_ckpt, device="cpu", batch_size=8).predict(expand_paths([images]))
    assert {frozenset(w) for w in want} == {frozenset({"path", "labels", "scores"})}
    assert {len(w["labels"]) for w in want} >= {0, 1, 3}  # empty sets are rows too
    for ext in ("csv", "jsonl", "json", "parquet"):
        out = tmp_path / f"p.{ext}"
        assert main(_cli(multilabel_ckpt, images, "--output", out, "--batch-size", 8, "--part-rows", 16)) == 0
        got = read_output(out)
        if ext == "parquet":
            _approx_scores(got, want)
        assert got == want, ext
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "path,labels,score_blue,score_green,score_red,error"
    printed = capsys.readouterr().out.splitlines()[: len(want)]
    for line, w in zip(printed, want):
        path, labels, scores = line.split("\t")
        assert labels == ("|".join(w["labels"]) or "-") and scores.startswith(f"(blue {w['scores']['blue']:.3f}, ")


def test_multilabel_resume_and_its_refusals(tmp_path, capsys, multilabel_ckpt, multilabel_csv, monkeypatch, tiny_best):
    """A stopped multi-label run resumes into the rows of an uninterrupted one; a stopped run whose rows have
    other columns (the model file changed) is refused in one line; --min-confidence is refused for the model."""
    images = multilabel_csv.parent / "img"
    out = tmp_path / "o.csv"
    argv = _cli(multilabel_ckpt, images, "--output", out, "--batch-size", 8, "-q")
    real, calls = imgclf.infer.predict.Predictor.logits, []

    def breaks_third(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the model broke")
        return real(self, batch)

    monkeypatch.setattr(imgclf.infer.predict.Predictor, "logits", breaks_third)
    assert main(argv) == 1
    monkeypatch.setattr(imgclf.infer.predict.Predictor, "logits", real)
    assert len(read_output(out)) == 16
    manifest = Path(str(out) + ".parts") / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"score_blue"', '"score_cyan"'))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and "columns" in err and len(err.splitlines()) == 1, err
    manifest.write_text(text)
    assert main([*argv, "--threshold", "0.2", "--resume"]) == 2  # another command: refused as any other change
    assert "--threshold None, this one 0.2" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert read_output(out) == Predictor(multilabel_ckpt, device="cpu", batch_size=8).predict(expand_paths([images]))
    assert main(_cli(multilabel_ckpt, images, "--output", tmp_path / "m.csv", "--min-confidence", "0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert "--min-confidence is for single-label models" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.csv.parts").exists()
    # --threshold: one number for every label; a goal fitted on labelled data, or a single-label model, refused
    for threshold, weights, words in (
        ("f1", multilabel_ckpt, "one number from 0 to 1 for every label"),
        ("1.5", multilabel_ckpt, "one number from 0 to 1 for every label"),
        ("0.5", tiny_best, "--threshold is for multi-label models"),
    ):
        assert main(_cli(weights, images, "--output", tmp_path / "t.csv", "--threshold", threshold)) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "t.csv").exists() and not (tmp_path / "t.csv.parts").exists()
