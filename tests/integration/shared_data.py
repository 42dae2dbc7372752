"""Where the real datasets are (../shared/data, beside the repository), and skip markers that say so when a
machine does not have them."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HYM = DATA / "hymenoptera"
CIFAR = DATA / "cifar10-jpg"

need_hym = pytest.mark.skipif(not HYM.is_dir(), reason=f"real data not present: {HYM}")
need_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"real data not present: {CIFAR}")
