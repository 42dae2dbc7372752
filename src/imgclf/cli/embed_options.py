"""The options objects of `imgclf embed` and `imgclf similar` (cli/options.py has the other commands'); the
shared ones from core/shared_options.py.

Torch-free, as cli/options.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.options import opt
from imgclf.core.shared_options import BATCH_SIZE, DATA_ROOT, DEVICE, JSON, PRECISION, WEIGHTS


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    SECTIONS = {"output": "output", "the model": "batch_size"}

    weights: str = WEIGHTS.field()
    paths: list[str] = opt(
        [],
        "a data set as --data names it (cifar10, a CSV manifest, a folder with train/...: every split, with labels), "
        "or image files and folders (searched recursively; label and split empty)",
        positional=True,
        nargs="*",
        metavar="DATA_OR_FILES",
    )
    files_from: str | None = opt(
        None,
        "also embed the images listed in LIST, one path a line (blank and # lines skipped; - reads stdin)",
        metavar="LIST",
    )
    output: str = opt(help="the embeddings, written as the run goes: a .parquet file", metavar="FILE.parquet")
    resume: bool = opt(
        False, "continue a stopped run of the same command: keep the rows in FILE.parts and embed the rest"
    )
    part_rows: int = opt(2_000, "rows per part file written as the run goes (a kill loses at most these)", ge=1)
    data_root: str | None = DATA_ROOT.field()
    batch_size: int = BATCH_SIZE.field(32)
    device: str = DEVICE.field()
    precision: str = PRECISION.field()


@dataclass(frozen=True, kw_only=True)
class SimilarOptions:
    SECTIONS = {"output": "sheet", "the model": "batch_size"}

    weights: str = WEIGHTS.field()
    images: list[str] = opt(
        help="query images, or folders of them (searched recursively)", positional=True, nargs="+", metavar="IMAGE"
    )
    index: str = opt(help="the embeddings to search: a file imgclf embed wrote with WEIGHTS", metavar="FILE.parquet")
    k: int = opt(10, "neighbours per query image", ge=1, short="-k")
    sheet: str | None = opt(
        None, "also draw a contact sheet: a row per query, its neighbours with their distances", metavar="FILE.png"
    )
    json: bool = JSON.field(help="one JSON object per query, a line each")
    batch_size: int = BATCH_SIZE.field(32)
    device: str = DEVICE.field()
    precision: str = PRECISION.field()
