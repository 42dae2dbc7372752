"""`imgclf embed`: a data set's or files' normalised features as Parquet with path, label and split, the model that
made them in the schema's metadata, streamed on infer/stream's machinery (--resume, torchrun)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import imgclf
from imgclf.cli.main import main
from imgclf.core.version import __version__
from imgclf.infer.embed import Embedder, read_embeddings, read_metadata
from imgclf.infer.predict import expand_paths
from imgclf.infer.runtime import CheckpointRunner

SRC = str(Path(imgclf.__file__).resolve().parents[1])


def _rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _embed(*args) -> list[str]:
    return ["embed", *(str(a) for a in args), "-q"]


def test_a_data_set_gives_every_split_with_labels_normalised_rows_and_the_model(tmp_path, tiny_best, tiny_data):
    out = tmp_path / "emb.parquet"
    assert main(_embed(tiny_best, tiny_data, "--output", out, "--batch-size", 8)) == 0
    rows = _rows(out)
    assert len(rows) == 75 and not any(r["error"] for r in rows)
    assert [r["split"] for r in rows] == ["train"] * 48 + ["val"] * 18 + ["test"] * 9  # the splits in order
    assert all(r["label"] == Path(r["path"]).parent.name for r in rows)  # the class folder
    vectors = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    meta = json.loads(pq.read_schema(out).metadata[b"imgclf"])
    runner = CheckpointRunner(tiny_best, device="cpu")
    assert meta["kind"] == "imgclf-embeddings" and meta["model"] == "test_tiny" and meta["dim"] == vectors.shape[1]
    assert meta["preprocess"] == runner.preprocess.to_dict() and meta["imgclf_version"] == __version__
    assert meta["weights_digest_of"] == "state_dict" and len(meta["weights_sha256"]) == 64
    # the features Runner.features gives for the same file
    one = Embedder(tiny_best, device="cpu").embed([rows[50]["path"]])[0]["embedding"]
    assert np.allclose(one, vectors[50], atol=1e-5)
    assert read_metadata(str(out)) == meta and len(read_embeddings(str(out)).vectors) == 75


def test_files_have_no_label_or_split_and_an_unreadable_file_is_an_error_row(tmp_path, tiny_best, tiny_data):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    files = expand_paths([tiny_data / "val"])[:5]
    listed = tmp_path / "list.txt"
    listed.write_text(f"{files[4]}\n# a comment\n")
    seen = []
    r = imgclf.embed(
        tiny_best, [*files[:4], bad], tmp_path / "e.parquet", files_from=listed, batch_size=2, on_row=seen.append
    )
    assert (r["rows"], r["embedded"], r["errors"], r["entries"]) == (6, 6, 1, 6)
    rows = _rows(tmp_path / "e.parquet")
    assert [x["path"] for x in rows] == [*files[:4], str(bad), files[4]] == [x["path"] for x in seen]
    assert all(x["label"] is None and x["split"] is None for x in rows)
    assert rows[4]["embedding"] is None and "not an image" in rows[4]["error"]
    assert read_embeddings(str(tmp_path / "e.parquet")).paths == [*files[:4], files[4]]  # the error row left out


def test_a_stopped_run_resumes_and_other_weights_are_refused(tmp_path, tiny_best, tiny_data, capsys, monkeypatch):
    weights = tmp_path / "w.pt"
    shutil.copy(tiny_best, weights)
    out = tmp_path / "emb.parquet"
    argv = _embed(weights, tiny_data / "val", "--output", out, "--batch-size", 4, "--part-rows", 4)
    assert main(argv[:-1] + ["--output", str(tmp_path / "whole.parquet"), "-q"]) == 0
    calls, real = [], CheckpointRunner.features

    def features(self, x):
        calls.append(len(x))
        if len(calls) == 4:  # the probe when opened, then two chunks
            raise RuntimeError("the model broke")
        return real(self, x)

    monkeypatch.setattr(CheckpointRunner, "features", features)
    assert main(argv) == 1
    assert "stopped after 8 of 18 images" in capsys.readouterr().err and len(_rows(out)) == 8
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err
    monkeypatch.setattr(CheckpointRunner, "features", real)
    assert main([*argv, "--resume"]) == 0
    assert _rows(out) == _rows(tmp_path / "whole.parquet")
    assert not Path(f"{out}.parts").exists()

    # stopped again, then the weights file changes: its rows are not mixed with the other model's
    os.remove(out)
    monkeypatch.setattr(CheckpointRunner, "features", features)
    calls.clear()
    assert main(argv) == 1
    capsys.readouterr()
    monkeypatch.setattr(CheckpointRunner, "features", real)
    ckpt = torch.load(weights, weights_only=True)
    ckpt["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, weights)
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other weights" in err and len(err.splitlines()) == 1


def test_bad_requests_exit_2_in_one_line_before_any_work(tmp_path, tiny_best, tiny_data, capsys):
    def refused(argv, words):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err, err

    refused(_embed(tiny_best, tiny_data, "--output", tmp_path / "e.csv"), "embed writes Parquet")
    refused(_embed(tiny_best, tmp_path / "gone", "--output", tmp_path / "e.parquet"), "not found")
    parts = tmp_path / "p.parquet.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"version": 2, "weights": "x"}))
    refused(_embed(tiny_best, tiny_data, "--output", tmp_path / "p.parquet", "--resume"), "stopped imgclf predict run")
    ts = tmp_path / "m.ts"
    imgclf.export(tiny_best, "torchscript", out=str(ts))
    refused(_embed(ts, tiny_data / "val", "--output", tmp_path / "t.parquet"), "gives no features")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".parquet")]


def test_torchrun_two_ranks_write_what_one_process_writes(tmp_path, tiny_best, tiny_data):
    argv = _embed(tiny_best, tiny_data, "--batch-size", 5, "--part-rows", 10)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each rank's threads (torchrun's OMP_NUM_THREADS=1): the same kernels run
    try:
        assert main([*argv, "--output", str(tmp_path / "one.parquet")]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "imgclf"]
    res = subprocess.run(
        [*run, *argv, "--output", str(tmp_path / "two.parquet")], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert _rows(tmp_path / "two.parquet") == _rows(tmp_path / "one.parquet")
    assert pq.read_schema(tmp_path / "two.parquet").metadata == pq.read_schema(tmp_path / "one.parquet").metadata


@pytest.mark.parametrize("family", ["test_tiny", "smallcnn"])
def test_each_cheap_family_gives_normalised_features(family, family_checkpoint, tiny_data):
    """Every family's head input, by the registry's hook (models/embedding.py; the others: tests/integration)."""
    embedder = Embedder(family_checkpoint(family), device="cpu", batch_size=2)
    rows = embedder.embed(expand_paths([tiny_data / "test"])[:3])
    vectors = np.stack([r["embedding"] for r in rows])
    assert vectors.shape == (3, embedder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
