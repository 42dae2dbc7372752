"""Every registry model family exports to every format: the families whose cells take seconds to minutes each
(tests/unit/exporting/test_every_family.py has the cheap ones and says why; conftest.EXPORT_FAMILIES lists them
all). Random weights and a tiny image folder in tmp_path, so it needs no ../shared/data; here rather than in
unit/ for its length. The timm models are skipped, with the install line, where timm is not installed."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import export_cell, export_families

from imgclf.core.formats import FORMATS

pytestmark = pytest.mark.integration  # verified against eager PyTorch; the AVX2-capped kernels run takes the unit cells

pytest.importorskip("onnxruntime")

NO_TIMM = importlib.util.find_spec("timm") is None


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=[
                pytest.mark.skipif(
                    n.startswith("timm:") and NO_TIMM, reason='timm is an optional extra: pip install -e ".[timm]"'
                ),
                *([pytest.mark.heavy] if n == "vgg16" else []),  # 138 M parameters: minutes a cell; .ci/run runs it
            ],
        )
        for n in export_families("integration")
    ],
)
def test_every_family_exports_to_every_format(name, fmt, family_checkpoint, tmp_path, capsys):
    export_cell(capsys, family_checkpoint(name), fmt, tmp_path / f"model{FORMATS[fmt].suffix}")
