"""The options several commands share, each declared once: a command's options object takes one with
`DEVICE.field()`, or `BATCH_SIZE.field(256)` with a default (or a help) of its own, which still names this
declaration as its origin (tests/unit/cli checks that every command's --device, --batch-size, ... come from here).

Here, below training/, serve/ and cli/, because TrainConfig, the server's options and the CLI's commands all use
them; torch-free, as everything in core/.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.options import Opt, Range

DEVICE = Opt("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")
BATCH_SIZE = Opt(help="images per batch", range=Range(ge=1))  # no default: each command gives its own
WORKERS = Opt(None, "data-loading worker processes (default: the number of CPU cores, at most 4)", range=Range(ge=0))
DATA_ROOT = Opt(None, "where cifar10/cifar100 are kept or downloaded (default: $IMGCLF_DATA or ~/.cache/imgclf/data)")
# the precision of the commands that run a trained model (evaluate, predict, select, serve); training's own
# (auto: the fastest on this machine) is TrainConfig.precision
PRECISION = Opt(
    "auto",
    "auto (fp32: the same answers as the fp32 exports on every machine), fp32 or bf16 (checkpoints; faster on some "
    "GPUs and CPUs with AMX, slightly different answers)",
    choices=("auto", "fp32", "bf16", "fp16"),
)
SPLIT = Opt("val", "val, test or train")
# issue 23: train, evaluate and check take a reviewed fixes.csv, train and check a grouping (each its own help)
APPLY_FIXES = Opt(None, "a reviewed fixes.csv (imgclf check --deep --fixes F) to apply", metavar="FIXES_CSV")
GROUP_BY = Opt(
    None,
    "groups of images kept on one side of a split: a CSV manifest column, or a regular expression over the paths",
    metavar="COLUMN|REGEX",
)
WEIGHTS = Opt(help="checkpoint (runs/NAME/best.pt) or a file from imgclf export", positional=True)
JSON = Opt(False, "print the result as JSON")

TTA_MODES = (
    "flip (the image and its mirror) or flip-crop (and two shifted crops, mirrored: 6 passes); their calibrated "
    "probabilities averaged; none: also switch off a model's built-in TTA (airnet) [the model's own]"
)
TTA = Opt(None, "test-time augmentation: " + TTA_MODES, choices=("none", "flip", "flip-crop"))
MIN_CONFIDENCE = Opt(
    None,
    'answer unsure (label null, "unsure": true; the top label and probability still given) when the top '
    "probability is below P",
    metavar="P",
    range=Range(gt=0, le=1),
)
# core/ood.py's SCORES, DEFAULT_BANK and DEFAULT_ACCEPT, written here without importing that module (it loads
# NumPy): imgclf-serve builds its parser from these declarations before glibc's malloc arenas are capped, which
# must come before NumPy loads (serve/main.py). tests/unit/serve/test_serve_reject.py checks that they agree.
OOD_SCORES = ("msp", "energy", "knn")
OOD_DEFAULT_BANK = 10_000
OOD_DEFAULT_ACCEPT = 0.95
# "none of these" (core/ood.py): predict's, streaming predict's and the server's rejection of images unlike the
# training data, beside --min-confidence; both may be given (each adds its own field; the label is null when either
# says so)
REJECT = Opt(
    None,
    'ood: answer "unknown" (label null, "unknown": true, and "ood": the score, its value and threshold) for an image '
    "unlike the model's training data, whose out-of-distribution score is above the threshold fitted on validation "
    "images (the model needs them: imgclf calibrate fits them)",
    choices=("ood",),
)
OOD_SCORE = Opt(
    None,
    "the score --reject ood uses: knn (distance to the nearest training features; a checkpoint, or an ONNX export "
    "of one), energy (from the logits) or msp (1 - the top probability) [knn where the model has it, else energy]",
    choices=OOD_SCORES,
)

# issue 25: the out-of-distribution fit of `train` (at its end, into best.pt) and `calibrate` (docs/ood.md)
OOD_BANK = Opt(
    OOD_DEFAULT_BANK,
    "training images (a seeded random subsample of larger sets) whose normalised features make the kNN "
    "out-of-distribution bank stored in the checkpoint; 0: no bank and no knn score (msp and energy are still fitted)",
    metavar="N",
    range=Range(ge=0),
)
OOD_ACCEPT = Opt(
    OOD_DEFAULT_ACCEPT,
    "the fraction of the validation images each out-of-distribution threshold (msp, energy, knn) accepts as known",
    metavar="P",
    range=Range(gt=0.5, lt=1),
)

# The pixel limit of every command that decodes image files (data/images.MAX_PIXELS is its default, applied by
# load_image); serve's --max-pixels is this one too
MAX_PIXELS = Opt(
    40_000_000,
    "largest image to decode, in pixels (width x height, read from its header before decoding; a larger one is "
    "left out with one line): raise it for larger photos",
    metavar="N",
    range=Range(ge=1),
)

# issue 27: experiment tracking (core/tracking.py) on train, evaluate and export; --tracking-uri also on predict and
# serve, where a model may be named `models:/NAME/VERSION`
TRACK = Opt(
    "none", "mlflow: log this run to MLflow (parameters, metrics, machine, data, files)", choices=("none", "mlflow")
)
TRACKING_URI = Opt(
    None,
    "the MLflow tracking store: http://HOST:PORT, sqlite:///FILE, ... (default: $MLFLOW_TRACKING_URI, else mlflow.db "
    "beside the runs folder, which `mlflow ui` opens)",
    metavar="URI",
)
# predict and serve: where a WEIGHTS of `models:/NAME/VERSION` is looked up
MODEL_STORE_HELP = (
    "the MLflow tracking store a WEIGHTS of models:/NAME/VERSION is fetched from (default: $MLFLOW_TRACKING_URI, "
    "else mlflow.db beside ./runs)"
)
EXPERIMENT = Opt(None, "the MLflow experiment the run is filed under (default: imgclf)", metavar="NAME")
REGISTER = Opt(
    None,
    "with --track mlflow: register the model in MLflow's model registry under NAME (a new version each time), so "
    "that `imgclf serve models:/NAME/VERSION` serves it",
    metavar="NAME",
)


VERBOSE = Opt(False, "show debug logs and tracebacks", short="-v")
QUIET = Opt(
    False,
    "no progress or info lines on stderr, only warnings and errors; results on stdout (predictions, reports, "
    "JSON) still print",
    short="-q",
)


@dataclass(frozen=True, kw_only=True)
class PixelLimit:
    """--max-pixels, on the parser of every command that decodes image files (cli/commands.py)."""

    max_pixels: int = MAX_PIXELS.field()


@dataclass(frozen=True, kw_only=True)
class Console:
    """-v and -q, on every parser (imgclf's, each of its commands', imgclf-serve's)."""

    verbose: bool = VERBOSE.field()
    quiet: bool = QUIET.field()
