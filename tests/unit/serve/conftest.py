"""Fixtures of the serving tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def multilabel_onnx(multilabel_ckpt, tmp_path_factory) -> str:
    """The multi-label checkpoint fixture exported by the existing exporter (`--format onnx`): an ONNX file whose
    metadata holds the task and the thresholds, for the PyTorch and the torch-free (slim) servers."""
    from imgclf.exporting.export import export

    out = tmp_path_factory.mktemp("mlonnx") / "multilabel.onnx"
    export(multilabel_ckpt, "onnx", out=str(out), verify_images=8)
    return str(out)
