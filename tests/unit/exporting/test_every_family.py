"""Every registry model family exports to every format, verified against eager PyTorch as every export is
(issue 22, defect 2: `imgclf export W --format onnx-int8` failed for every smallcnn checkpoint with a TypeError
from onnxruntime's shape inference). The cheap families here; the others in
tests/integration/test_export_families.py (conftest.EXPORT_FAMILIES says which is where)."""

from __future__ import annotations

import pytest
from conftest import EXPORT_FAMILIES, export_cell, export_families

from imgclf.core.formats import FORMATS
from imgclf.models.registry import REGISTRY

pytestmark = pytest.mark.kernels

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", export_families("unit"))
def test_every_family_exports_to_every_format(name, fmt, family_checkpoint, tmp_path, capsys):
    export_cell(capsys, family_checkpoint(name), fmt, tmp_path / f"model{FORMATS[fmt].suffix}")


def test_every_registry_model_is_covered_by_a_family():
    """A model added to the registry must be given a family in conftest.EXPORT_FAMILIES (or be one)."""
    covered = {m for _, models, _ in EXPORT_FAMILIES.values() for m in models}
    assert set(REGISTRY) <= covered, sorted(set(REGISTRY) - covered)
    for name, (size, models, where) in EXPORT_FAMILIES.items():
        assert where in ("unit", "integration") and (name in models or name.split(":")[0] + ":" in models)
        if not name.startswith("timm:"):
            assert size >= REGISTRY[name].min_img_size, name
