"""The options objects of `imgclf export` and `imgclf bench` (cli/options.py has the other commands'): --format
and the options only some formats take come from the export-format table (core/formats.py).

Torch-free, as cli/options.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from imgclf.cli.options import MAX_EVAL_IMAGES
from imgclf.core.formats import DEFAULT_OPSET, FORMATS, format_options
from imgclf.core.options import flag_of, opt
from imgclf.core.shared_options import (
    DATA_ROOT,
    EXPERIMENT,
    JSON,
    REGISTER,
    SPLIT,
    TRACK,
    TRACKING_URI,
    TTA,
    TTA_MODES,
    WEIGHTS,
)
from imgclf.core.tracking import check_tracking

log = logging.getLogger(__name__)


def format_help() -> str:
    """--format's help: the formats in the table as it is when --help is built, and the options each takes."""
    own = "; ".join(f"{f.name} takes {', '.join(map(flag_of, f.options))}" for f in FORMATS.values() if f.options)
    return f"one of: {', '.join(FORMATS)} ({own}; every format takes the others)"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    SECTIONS = {
        "verification": "verify_data",
        "accuracy": "data",
        "tracking": "track",
        "options only some formats take (see --format)": "opset",
    }

    weights: str = WEIGHTS.field(help="checkpoint, e.g. runs/NAME/best.pt")
    format: str = opt(help=format_help, metavar="FORMAT")
    out: str | None = opt(
        None, "output file (default: next to the checkpoint, e.g. best.onnx, best.int8.onnx)", metavar="PATH"
    )
    json: bool = JSON.field(help="print the report as JSON")
    tta: str | None = TTA.field(
        help="bake test-time augmentation into the exported graph, and print the accuracy with and without it: "
        + TTA_MODES
    )
    verify_data: str | None = opt(
        None, "verification images: val split of this data (default: the recorded data)", metavar="DIR"
    )
    verify_images: int | None = opt(None, "images for verification: the whole val split, up to this many [500]", ge=1)
    calib_data: str | None = opt(
        None,
        "int8 calibration images: a data source (its train split) or a folder of images (default: the training "
        "data the checkpoint records); the verification images too when neither --verify-data nor the checkpoint "
        "names any",
        metavar="DIR",
    )
    data: str | None = opt(None, "also report accuracy of the checkpoint and the export on --split of this data")
    split: str = SPLIT.field(help="split for --data accuracy")
    data_root: str | None = DATA_ROOT.field()
    max_eval_images: int | None = MAX_EVAL_IMAGES.field()
    # --track mlflow (core/tracking.py)
    track: str = TRACK.field()
    tracking_uri: str | None = TRACKING_URI.field()
    experiment: str | None = EXPERIMENT.field()
    register: str | None = REGISTER.field()
    opset: int = opt(DEFAULT_OPSET, "ONNX opset")
    calib_images: int | None = opt(None, "int8: images for calibration [256]", ge=1)
    calib_method: str = opt(
        "minmax",
        "onnx-int8 calibration tried first: minmax, entropy or percentile",
        ("minmax", "entropy", "percentile"),
    )
    int8_tries: int | None = opt(
        None,
        "onnx-int8: most quantizations to try while none reaches --int8-target (the other calibration methods, "
        "then the layers measured to lose most kept in fp32); the best is written [6]; 1: only --calib-method",
        ge=1,
    )
    int8_target: float | None = opt(
        None,
        "onnx-int8: stop trying once a file keeps this share of the verification images' labels (0.99 of 153 "
        "images: 152; of 99 or fewer: all) [0.99]",
        gt=0,
        le=1,
    )
    reduce_range: bool | None = opt(
        None,
        "onnx-int8: 7-bit weights, exact on every CPU (x86 CPUs without VNNI saturate 8-bit ones); --no-reduce-range: "
        "8-bit weights. Neither: 7-bit, and one 8-bit try where the 7-bit tries miss --int8-target on a CPU with "
        "VNNI (a file with 8-bit weights is refused on x86 CPUs without VNNI)",
    )

    def check(self, given: frozenset[str]) -> None:
        """Before any work: an option given to a format that does not take it (the table says which do) is said in
        one warning, not refused: a script may export several formats with one set of options."""
        fmt = FORMATS.get(str(self.format).lower())
        if fmt is None:  # export() names the unknown format, with 'did you mean'
            return
        taken = format_options()
        wrong = [name for name in taken if name in given and name not in fmt.options]
        if wrong:
            unused = [
                f"{flag_of(n)} (only {', '.join(taken[n])} {'takes' if len(taken[n]) == 1 else 'take'} it)"
                for n in wrong
            ]
            log.warning("--format %s ignores %s", fmt.name, ", ".join(unused))
        check_tracking(self.track, self.tracking_uri, self.register)


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    SECTIONS = {"timing": "eager"}

    inputs: list[str] = opt(
        help=lambda: f"checkpoints and/or exported files of one model ({', '.join(FORMATS)})",
        positional=True,
        nargs="+",
        metavar="WEIGHTS_OR_EXPORT",
    )
    batch_sizes: str = opt("1,32", "comma-separated batch sizes")
    data: str | None = opt(
        None, "time on real images of this data and report accuracy on --split (default: random inputs, no accuracy)"
    )
    split: str = SPLIT.field(help="split for --data")
    data_root: str | None = DATA_ROOT.field()
    max_eval_images: int | None = MAX_EVAL_IMAGES.field()
    json: bool = JSON.field(help="print the rows as JSON")
    eager: str = opt("fp32,fp32-cl,bf16-cl", "eager settings for checkpoints")
    warmup: int = opt(2, "untimed iterations per setting", ge=0)
    iters: int = opt(10, "timed iterations per setting", ge=1)
    rounds: int = opt(3, "the iterations are spread over this many rounds across settings", ge=1)
    max_seconds: float = opt(60.0, "stop timing a slow setting after this long (3 iterations at least)", gt=0)
    threads: int | None = opt(None, "intra-op threads for PyTorch and onnxruntime [PyTorch's default]", ge=1)
    memory_check: bool = opt(
        True,
        "refuse batch sizes whose images and activations will not fit in the memory available, before any is made "
        "(--no-memory-check: warn and go on)",
    )
