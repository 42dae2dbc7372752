"""core/modelfile.py: the model-file checks and the metadata that runtime.open_model and the server share."""

from __future__ import annotations

import os

import pytest

from imgclf.core.artifact import Preprocess
from imgclf.core.errors import CheckpointError
from imgclf.core.modelfile import check_model_file, export_extra, is_onnx_path, metadata


def _refusal(fn, path) -> str:
    with pytest.raises(CheckpointError) as e:
        fn(path)
    return str(e.value)


def test_one_check_for_open_model_and_the_server(tmp_path):
    """open_model and the server's open_served refuse a missing file, a folder and a FIFO with check_model_file's
    words, before reading a byte (a FIFO would block)."""
    from imgclf.infer.runtime import open_model
    from imgclf.serve.model import open_served
    from imgclf.serve.settings import ServeSettings

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    for path in (tmp_path / "missing.pt", tmp_path, fifo):
        said = _refusal(check_model_file, str(path))
        assert _refusal(open_model, str(path)) == said
        assert _refusal(lambda p: open_served(p, ServeSettings()), str(path)) == said
    assert "not found" in _refusal(check_model_file, str(tmp_path / "missing.pt"))
    assert "is a folder" in _refusal(check_model_file, str(tmp_path))
    assert "not a regular file" in _refusal(check_model_file, str(fifo))


def test_onnx_files_are_known_by_name():
    assert is_onnx_path("a/model.ONNX") and is_onnx_path("m.int8.onnx")
    assert not is_onnx_path("best.pt") and not is_onnx_path("onnx")


class _Opened:
    path, format, model_name, classes = "m.onnx", "onnx-int8", "tiny", ["a", "b"]
    preprocess = Preprocess(img_size=8, resize=8, mean=[0.5] * 3, std=[0.5] * 3)
    extra = export_extra({"source": "best.pt", "other": 1}, device="cpu", threads="auto")


def test_metadata_is_one_shape_in_one_order():
    got = metadata(_Opened(), temperature=1.5, tta=None)
    assert list(got) == [
        *("path", "format", "model", "classes", "num_classes", "preprocess"),
        *("temperature", "tta", "source", "device", "threads"),
    ]
    assert got["path"] == os.path.abspath("m.onnx") and got["num_classes"] == 2
    assert got["preprocess"] == _Opened.preprocess.to_dict() and got["source"] == "best.pt"
    assert list(metadata(_Opened())) == [k for k in got if k not in ("temperature", "tta")]


def test_runners_and_the_slim_model_describe_themselves_with_it(tiny_best, tmp_path):
    """Runner.metadata and OnnxModel.metadata are core.modelfile.metadata: a checkpoint adds its temperature and
    test-time augmentation; an ONNX export opened by runtime and by the slim server says the same but for those
    (the out-of-distribution record included)."""
    pytest.importorskip("onnxruntime")
    from imgclf.exporting.export import export
    from imgclf.infer.runtime import open_model
    from imgclf.serve.onnx_model import OnnxModel

    runner = open_model(tiny_best, device="cpu")
    assert runner.ood is not None  # training fits the out-of-distribution record: both describe it too
    assert runner.metadata() == metadata(runner, temperature=runner.temperature, tta=runner.tta, ood=runner.ood)
    out = tmp_path / "tiny.onnx"
    export(tiny_best, "onnx", out=str(out), verify_images=8)
    by_runtime, slim = open_model(str(out), device="cpu"), OnnxModel(str(out), device="cpu", threads=None)
    assert slim.metadata() == metadata(slim, ood=slim.ood)
    want = {k: v for k, v in by_runtime.metadata().items() if k not in ("temperature", "tta")}
    assert slim.metadata() == want
