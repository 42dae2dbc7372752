"""`imgclf` command line: each subcommand parses its flags and calls one API function.

`main(argv) -> int` is what tests call in-process. Usage errors print one line and return 2; other failures
print one line and return 1; tracebacks only with --verbose.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from imgclf.core.version import __version__
from imgclf.core.errors import ImgclfError, UsageError
from imgclf.core.options import Range, check_output_folder, out_of_range
from imgclf.core.progress import shown
from imgclf.training.options import FIELDS, field_type

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM (`kill`, a job scheduler, a container stopping), raised in the main thread so that every `finally`
    and `atomic_open` runs: a stopped export or training run leaves no temporary file behind."""


def _raise_terminated(signum, frame):
    raise Terminated()


# 128 + SIGPIPE: what a shell reports for `cat` or `grep` when the reader of their output exits first (`| head`),
# so `set -o pipefail` sees the same for imgclf; 0 would claim that all the output was delivered.
EXIT_BROKEN_PIPE = 128 + 13


def _stdout_to_devnull() -> None:
    """After EPIPE on stdout, point it at /dev/null, so that later prints and the interpreter's final flush do not
    raise BrokenPipeError again (Python's documented recipe, `signal` module: "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file descriptor (a test's capture): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class Stdout:
    """Result lines to stdout. When the reader has gone (EPIPE), the rest is dropped: with `keep_going` the
    command goes on quietly (it has a file to finish), else BrokenPipeError ends it (main exits 141)."""

    def __init__(self, *, keep_going: bool):
        self.keep_going, self.closed = keep_going, False

    def print(self, line: str) -> None:
        if self.closed:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            self.closed = True
            _stdout_to_devnull()
            if not self.keep_going:
                raise


def check_output_file(path: str, flag: str) -> None:
    """Before any work: an output file's folder is created when it is written (as train, evaluate, export and
    samples create theirs), so it need not exist, but it must be possible to make and write."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} '{path}' is a folder: give a file name")
    check_output_folder(os.path.dirname(os.path.abspath(path)), flag)  # names the folder that is wrong


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)  # `--epoch 3` is a typo to report, not a prefix of --epochs
        super().__init__(*args, **kw)

    def error(self, message):  # one line, exit 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(t: type, rng: Range | None = None, words: tuple = (), **bounds):
    """An argparse `type` for an int or float flag that refuses values outside the range at parse time: one
    line, exit 2, before any work. `_number(int, ge=1)` or with a Range declared in config.py; `words` are
    strings it takes as well (`--lr auto`)."""
    rng = rng or Range(**bounds)
    alt = f" (or {', '.join(words)})" if words else ""

    def parse(text: str):
        if text.strip().lower() in words:
            return text.strip().lower()
        try:
            value = t(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'a whole number' if t is int else 'a number'}{alt}, not '{text}'"
            ) from None
        problem = out_of_range(value, rng, words)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = t.__name__
    return parse


def _add_inference_precision(p: argparse.ArgumentParser) -> None:
    """--precision of the commands that run a model (evaluate, predict, serve); training's comes from config.py."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto (fp32: the same answers as the fp32 exports on every machine), fp32 or bf16 (checkpoints; "
        "faster on some GPUs and CPUs with AMX, slightly different answers) [auto]",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show debug logs and tracebacks"
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress or info lines on stderr, only warnings and errors (train prints nothing else); "
        "results on stdout (predictions, reports, JSON) still print",
    )


def _add_nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=_number(int, ge=1),
        default=argparse.SUPPRESS,
        help="run as N processes on this machine: the same command under `torchrun --standalone --nproc-per-node N` "
        "(Gloo on CPUs, NCCL on GPUs; several machines: see the README); each rank gets the cores / N as threads",
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier",
        description="Train a classifier; the run goes to OUT/NAME. Under torchrun (or with --nproc N) each rank "
        "trains on its shard of every epoch (DistributedDataParallel); --batch-size is per rank.",
    )
    _add_train_options(p)
    _add_nproc(p)
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: loss against lr, a plot and a suggested lr",
        description="The learning-rate range test (Smith 2015; fastai's lr_find) for the run the "
        "train options describe: a few steps with the lr rising exponentially, the loss "
        "curve in OUT/NAME/lr_find.png and .json, and a suggested lr (fastai's valley). "
        "`imgclf train --lr auto` runs it first and trains at its suggestion.",
    )
    p.add_argument("--start-lr", type=_number(float, gt=0), default=1e-7, help="first lr of the sweep [1e-07]")
    p.add_argument("--end-lr", type=_number(float, gt=0), default=10.0, help="last lr of the sweep [10]")
    p.add_argument("--steps", type=_number(int, ge=2), default=100, help="optimisation steps in the sweep [100]")
    _add_train_options(p)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig option as a flag (unset flags are not passed on, so defaults stay the config's)."""
    _common(p)
    p.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="options from a YAML file (flags given here win)",
    )
    for name, f in FIELDS.items():
        t = field_type(name)
        flag = "--" + name.replace("_", "-")
        rng = f.metadata.get("range")
        kw = {
            "default": argparse.SUPPRESS,
            "help": f.metadata["help"]
            + ("" if f.default is None else f" [{f.default}]")
            + (f" ({rng})" if rng else ""),
        }
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            p.add_argument(
                flag, type=_number(t, rng, f.metadata["words"]) if t in (int, float) else t, metavar=name.upper(), **kw
            )


def _add_export(sub) -> None:
    # the formats' table is torch-free; the defaults live in exporting.py (not imported here: it imports torch,
    # and `imgclf --help` should not)
    from imgclf.core.formats import DEFAULT_OPSET, FORMATS

    formats = ", ".join(FORMATS)
    p = sub.add_parser(
        "export",
        help="export a checkpoint (TorchScript, pt2, ONNX, int8), verified against PyTorch",
        description="Export a checkpoint to a deployment format. The file is written only after its logits "
        "match eager PyTorch on real images; it carries the class names and preprocessing.",
    )
    _common(p)
    p.add_argument("weights", help="checkpoint, e.g. runs/NAME/best.pt")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of: {formats}")
    p.add_argument(
        "--out", metavar="PATH", help="output file (default: next to the checkpoint, e.g. best.onnx, best.int8.onnx)"
    )
    p.add_argument(
        "--calib-data",
        metavar="DIR",
        help="int8 calibration images: a data source (its train split) or a folder "
        "of images (default: the training data the checkpoint records)",
    )
    p.add_argument("--calib-images", type=_number(int, ge=1), help="images for calibration [256]")
    p.add_argument(
        "--calib-method",
        default="minmax",
        choices=("minmax", "entropy", "percentile"),
        help="onnx-int8 calibration tried first: minmax, entropy or percentile [minmax]",
    )
    p.add_argument(
        "--int8-tries",
        type=_number(int, ge=1),
        help="onnx-int8: most quantizations to try when one misses the bar (the other calibration methods, "
        "then the layers measured to lose most kept in fp32) [6]; 1: only --calib-method",
    )
    p.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="onnx-int8: 7-bit weights, no int16 saturation on x86 CPUs without VNNI [on]",
    )
    p.add_argument(
        "--verify-data", metavar="DIR", help="verification images: val split of this data (default: the recorded data)"
    )
    p.add_argument(
        "--verify-images",
        type=_number(int, ge=1),
        help="images for verification: the whole val split, up to this many [500]",
    )
    p.add_argument("--data", help="also report accuracy of the checkpoint and the export on --split of this data")
    p.add_argument("--split", default="val", help="split for --data accuracy [val]")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument(
        "--max-eval-images",
        type=_number(int, ge=1),
        help="accuracy on at most this many images of the split (seeded choice)",
    )
    p.add_argument("--opset", type=int, help=f"ONNX opset [{DEFAULT_OPSET}]")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_tta(p, export=True)


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency, images/s, size (and accuracy) of checkpoints and exported files",
        description="Time checkpoints (eager fp32 NCHW, fp32 channels_last, bf16 autocast channels_last) and "
        "exported files on the same images, in one run.",
    )
    _common(p)
    from imgclf.core.formats import FORMATS

    p.add_argument(
        "inputs",
        nargs="+",
        metavar="WEIGHTS_OR_EXPORT",
        help=f"checkpoints and/or exported files of one model ({', '.join(FORMATS)})",
    )
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes [1,32]")
    p.add_argument(
        "--data",
        help="time on real images of this data and report accuracy on --split (default: random inputs, no accuracy)",
    )
    p.add_argument("--split", default="val", help="split for --data [val]")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument(
        "--eager", default="fp32,fp32-cl,bf16-cl", help="eager settings for checkpoints [fp32,fp32-cl,bf16-cl]"
    )
    p.add_argument("--warmup", type=_number(int, ge=0), default=2, help="untimed iterations per setting [2]")
    p.add_argument("--iters", type=_number(int, ge=1), default=10, help="timed iterations per setting [10]")
    p.add_argument(
        "--rounds",
        type=_number(int, ge=1),
        default=3,
        help="the iterations are spread over this many rounds across settings [3]",
    )
    p.add_argument(
        "--max-seconds",
        type=_number(float, gt=0),
        default=60.0,
        help="stop timing a slow setting after this long (3 iterations at least) [60]",
    )
    p.add_argument(
        "--max-eval-images", type=_number(int, ge=1), help="accuracy on at most this many images (seeded choice)"
    )
    p.add_argument(
        "--threads", type=_number(int, ge=1), help="intra-op threads for PyTorch and onnxruntime [PyTorch's default]"
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imgclf", description="From a folder of images to a trained, evaluated classifier.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_train(sub)

    p = sub.add_parser("evaluate", help="metrics, per-class report and plots for a checkpoint on a split")
    _common(p)
    p.add_argument("weights", help="checkpoint (runs/NAME/best.pt) or a file from imgclf export")
    p.add_argument("--data", help="data to evaluate on (default: the data the model was trained on)")
    p.add_argument("--split", default="val", help="val, test or train [val]")
    p.add_argument("--out", help="output folder (default: eval-SPLIT next to the weights)")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=256, help="images per batch [256]")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=_number(int, ge=0), help="decoding processes (default: the CPU cores, at most 4)")
    _add_inference_precision(p)
    p.add_argument("--json", action="store_true", help="print eval.json instead of the report")
    _add_nproc(p)
    _add_tta(p)

    _add_predict(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_active(sub)
    _add_robustness(sub)
    _add_score(sub)
    _add_explain(sub)
    _add_calibrate(sub)
    _add_report(sub)

    p = sub.add_parser("check", help="find corrupt, truncated, duplicate and leaked files in a data folder")
    _common(p)
    p.add_argument("data", help="folder of class folders (with or without train/val/test)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--workers", type=_number(int, ge=1), help="decoding processes (default: all cores)")

    p = sub.add_parser("samples", help="save a few images of a split as files (e.g. digits), to try predict on")
    _common(p)
    p.add_argument("data", help="a data source, e.g. digits or cifar10")
    p.add_argument("--out", required=True, help="folder to write CLASS/NAME image files into")
    p.add_argument("--split", default="val", help="split to take images from [val]")
    p.add_argument("-n", type=_number(int, ge=1), default=10, help="number of images [10]")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")

    p = sub.add_parser(
        "env",
        help="this machine as imgclf sees it: CPU instructions, GPU, versions, what auto picks",
        description="The machine as imgclf sees it: CPU model and the instruction sets that decide which "
        "kernels run, GPU, versions, threads, and what `auto` picks here.",
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--probe", metavar="MODEL", help="run (or read the cached) training-precision probe for MODEL now")
    p.add_argument("--img-size", type=_number(int, ge=1), help="input size for --probe (default: the model's own)")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=128, help="batch size for --probe [128]")
    p.add_argument("--refresh", action="store_true", help="with --probe: measure again instead of reading the cache")

    p = sub.add_parser("models", help="list models, parameter counts and offline pretrained weights")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--timm",
        metavar="PATTERN",
        help="list the timm models matching PATTERN ('resnet*', '*vit*'), "
        "usable as --model timm:NAME (needs pip install timm)",
    )
    _add_serve(sub)
    return parser


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP service and web page for a checkpoint or exported model",
        description="Serve a model over HTTP: POST /predict, GET /health /ready /metadata /metrics, "
        "a web page at /, OpenAPI docs at /docs.",
    )
    _common(p)
    p.add_argument("weights", metavar="WEIGHTS_OR_EXPORT", help="checkpoint (runs/NAME/best.pt) or exported model file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface [127.0.0.1]")
    p.add_argument(
        "--port", type=_number(int, ge=0, le=65535), default=8000, help="TCP port; 0 picks a free one [8000]"
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="images per model batch [32]")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images, ms [5]")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body, MiB [10]")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image, pixels (from its header) [40000000]"
    )
    p.add_argument("--max-files", type=int, default=64, help="images per request [64]")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request time limit, seconds [30]")
    p.add_argument("--top-k", type=int, default=5, help="default labels per image [5]")
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key on /predict, /metadata and /metrics (default: $IMGCLF_API_KEY; none when unset)",
    )
    p.add_argument("--decode-workers", type=int, default=None, help="image decoding threads [CPU count, at most 4]")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the model's intra-op threads, PyTorch and onnxruntime [PyTorch's default: the cores, or "
        "$OMP_NUM_THREADS]",
    )
    p.add_argument(
        "--max-concurrency",
        type=_number(int, ge=1),
        default=1024,
        help="open connections before answering 503 (in JSON) [1024]",
    )
    p.add_argument(
        "--header-timeout",
        type=_number(float, gt=0),
        default=10.0,
        help="seconds a client has to send its request headers before it is answered 408 and disconnected [10]",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off: /metrics counts them)")
    p.add_argument("--device", default="auto")
    _add_inference_precision(p)
    from imgclf.serve.main import add_trust_flags

    add_trust_flags(p)  # --min-confidence, --no-explain: one definition for `imgclf serve` and `imgclf-serve`


def request_huge_pages() -> bool:
    """Ask PyTorch's CPU allocator for transparent huge pages (THP_MEM_ALLOC_ENABLE), before torch is imported.

    Freed activations above glibc's mmap threshold go back to the kernel and are faulted in and zeroed again on
    the next step, 4 KiB at a time: on this 2-core machine EfficientNet-Lite0 training (224 px, batch 64) spent
    as much time in the kernel as in user code. 2 MiB pages cut that: ~11 -> ~19 images/s in the same run.
    (Keeping freed memory in the heap with mallopt was faster still but grew the heap until the OOM killer
    ended a 10-epoch fine-tune, so it is not used.) Only possible before torch's first allocation; returns
    whether the setting is in effect. IMGCLF_NO_THP=1 leaves the environment alone."""
    if os.environ.get("IMGCLF_NO_THP"):
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"


def _setup_logging(verbose: bool, quiet: bool) -> None:
    class Fmt(logging.Formatter):
        def format(self, record):
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + self.formatException(record.exc_info)
            return f"warning: {msg}" if record.levelno == logging.WARNING else msg

    # The package's logger: every module logs to a child of it (logging.getLogger(__name__)), which propagates here.
    root = logging.getLogger("imgclf")
    for h in list(root.handlers):
        if getattr(h, "_imgclf_cli", False):
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h._imgclf_cli = True
    h.setFormatter(Fmt())
    root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _rank_threads() -> None:
    """Under torchrun: each rank's threads are the cores divided among this machine's ranks (torchrun's default,
    OMP_NUM_THREADS=1, would leave most cores idle); an OMP_NUM_THREADS other than 1 is taken as the user's."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or os.environ.get("OMP_NUM_THREADS", "1") != "1":
        return
    import torch

    from imgclf.compute.distributed import rank_threads, world_from_env

    torch.set_num_threads(rank_threads(world_from_env()))


def cmd_train(a: dict) -> int:
    from imgclf.training.api import preflight, train
    from imgclf.training.options import make_config

    options = {k: v for k, v in a.items() if k in FIELDS}
    # the config records the flags and YAML keys given as the options set (TrainConfig.explicit)
    cfg = make_config(options, source="command line", config_file=a.get("config"))
    if a.get("nproc"):  # --nproc N: the options checked here, then the same command under torchrun
        from imgclf.compute.distributed import launch

        preflight(cfg, a["nproc"])
        return launch(a["nproc"], a["argv"])
    # The run directory and the best epoch are logged by `train` (and kept in train.log): not printed again here.
    train(cfg)
    return 0


def cmd_lr_find(a: dict) -> int:
    from imgclf.training.api import lr_find
    from imgclf.training.options import make_config

    options = {k: v for k, v in a.items() if k in FIELDS}
    cfg = make_config(options, source="command line", config_file=a.get("config"))
    r = lr_find(cfg, start_lr=a["start_lr"], end_lr=a["end_lr"], steps=a["steps"])
    if r["suggestion"] is not None:
        print(f"suggested lr: {r['suggestion']:.3g}")
    print(r["reason"])
    print(f"curve: {os.path.join(r['run_dir'], 'lr_find.png')} (and lr_find.json)")
    return 0 if r["suggestion"] is not None else 1


def cmd_evaluate(a: dict) -> int:
    from imgclf.evaluation.command import evaluate
    from imgclf.evaluation.metrics import format_report

    if a.get("out"):
        check_output_folder(a["out"], "--out")
    m = evaluate(
        a["weights"],
        a.get("data"),
        split=a["split"],
        out=a.get("out"),
        batch_size=a["batch_size"],
        device=a["device"],
        workers=a.get("workers"),
        data_root=a.get("data_root"),
        precision=a["precision"],
        tta=a.get("tta"),
    )
    if _rank() > 0:  # under torchrun: every rank has the metrics, rank 0 reports them
        return 0
    if a.get("json"):
        print(json.dumps(m, indent=2))
    else:
        print(format_report(m))
        log.info("wrote eval.json, confusion_matrix.png, misclassified.png, reliability.png to %s", m["out"])
    return 0


class _IntermixedParser(Parser):
    """predict's parser: PATHs may follow options (`predict W --top-k 2 photos/`). PATH is optional (--files-from
    may list every image), and argparse gives an optional positional its empty list as soon as an option follows
    WEIGHTS, then refuses the PATHs after it; intermixed parsing reads the options first, then the positionals."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixed", False):  # parse_known_intermixed_args calls back here, twice
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="label images, folders of images or a list of millions of files",
        description="Label images. With --output the rows are written as each batch finishes (bounded memory); "
        "a stopped run continues with --resume; under torchrun each rank predicts its share and rank 0 merges "
        "them into the one --output file.",
    )
    p.__class__ = _IntermixedParser  # add_parser makes every subcommand's parser of one class
    _common(p)
    p.add_argument("weights", help="checkpoint (runs/NAME/best.pt) or a file from imgclf export")
    p.add_argument("paths", nargs="*", default=[], metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument(
        "--files-from",
        metavar="LIST",
        help="also predict the images listed in LIST, one path a line (blank and # lines skipped; - reads stdin)",
    )
    p.add_argument(
        "--top-k", type=_number(int, ge=1), default=5, help="labels per image in top_k (clamped to the class count) [5]"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--output",
        metavar="FILE",
        help="also write the predictions to FILE: .csv, .json (an array), .jsonl (JSON lines) or .parquet",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run of the same command: keep the rows in FILE.parts and predict the rest",
    )
    p.add_argument(
        "--part-rows",
        type=_number(int, ge=1),
        default=10_000,
        help="Parquet: rows per part file written as the run goes (a kill loses at most these) [10000]",
    )
    p.add_argument("--batch-size", type=_number(int, ge=1), default=32, help="images per batch [32]")
    p.add_argument("--device", default="auto")
    _add_inference_precision(p)
    _add_nproc(p)
    _add_tta(p, min_confidence=True)


def cmd_predict(a: dict) -> int:
    from imgclf.compute.distributed import world_from_env
    from imgclf.infer.stream import predict_files

    out = a.get("output")
    if out:
        check_output_file(out, "--output")
    stdout = Stdout(keep_going=bool(out))  # with --output, a closed stdout (`| head`) does not stop the file
    # under torchrun the rows go to the merged --output only: two ranks' lines on one stdout would interleave
    printing = not world_from_env().distributed
    r = predict_files(
        a["weights"],
        a["paths"],
        out,
        files_from=a.get("files_from"),
        top_k=a["top_k"],
        batch_size=a["batch_size"],
        device=a["device"],
        precision=a["precision"],
        resume=a["resume"],
        part_rows=a["part_rows"],
        tta=a.get("tta"),
        min_confidence=a.get("min_confidence"),
        on_row=(lambda row: stdout.print(_prediction_line(row, a.get("json")))) if printing else None,
    )
    failed, done = r["errors"], r["predicted"]
    if done and failed == done:
        raise ImgclfError(f"none of the {failed} images could be read or processed (each one's error is listed above)")
    if failed:
        log.warning("%d of %d images could not be read or processed", failed, done)
    return EXIT_BROKEN_PIPE if stdout.closed else 0


def _prediction_line(r: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(r)
    if "error" in r:
        return f"{r['path']}\tERROR\t{r['error']}"
    others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"][1:])
    shown = r["label"] if not r.get("unsure") else f"unsure ({r['top_k'][0]['label']})"
    return f"{r['path']}\t{shown}\t{r['probability']:.3f}" + (f"\t({others})" if others else "")


def cmd_export(a: dict) -> int:
    from imgclf.exporting.export import export, format_export_report

    if a.get("out"):
        check_output_file(a["out"], "--out")
    given = {k: a[k] for k in ("calib_images", "verify_images", "opset", "int8_tries") if a.get(k) is not None}
    r = export(
        a["weights"],
        a["format"],
        out=a.get("out"),
        calib_data=a.get("calib_data"),
        calib_method=a["calib_method"],
        reduce_range=a["reduce_range"],
        verify_data=a.get("verify_data"),
        data=a.get("data"),
        split=a["split"],
        data_root=a.get("data_root"),
        max_eval_images=a.get("max_eval_images"),
        tta=a.get("tta"),
        **given,
    )
    print(json.dumps(r, indent=2) if a.get("json") else format_export_report(r))
    return 0


def cmd_bench(a: dict) -> int:
    from imgclf.exporting.bench import bench, format_table, parse_batch_sizes

    if a.get("threads") is not None:
        if a["threads"] < 1:
            raise UsageError(f"--threads must be at least 1, got {a['threads']}")
        import torch

        torch.set_num_threads(a["threads"])
    rows = bench(
        a["inputs"],
        batch_sizes=parse_batch_sizes(a["batch_sizes"]),
        data=a.get("data"),
        split=a["split"],
        data_root=a.get("data_root"),
        eager=[e.strip() for e in a["eager"].split(",") if e.strip()],
        warmup=a["warmup"],
        iters=a["iters"],
        rounds=a["rounds"],
        max_seconds=a["max_seconds"],
        max_eval_images=a.get("max_eval_images"),
    )
    print(json.dumps(rows, indent=2) if a.get("json") else format_table(rows))
    return 0


def cmd_check(a: dict) -> int:
    from imgclf.data.check import check_data

    report = check_data(a["data"], workers=a.get("workers"), progress=not a.get("quiet", False) and sys.stderr.isatty())
    if a.get("json"):
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_text())
    return 0 if report.ok else 1


def cmd_models(a: dict) -> int:
    if a.get("timm") is not None:
        return _timm_models(a)
    from imgclf.models.registry import list_models

    rows = list_models()
    if a.get("json"):
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'params':>12} {'input':>6}  {'pretrained (offline)':<22} description")
    for r in rows:
        print(f"{r['name']:<20} {r['params']:>12,} {r['img_size']:>6}  {r['pretrained']:<22} {r['description']}")
    print("params are counted from the model with a 1000-class head; the head is replaced for your classes")
    return 0


def _timm_models(a: dict) -> int:
    from imgclf.models.registry import list_models

    rows = list_models(timm=a["timm"])
    if a.get("json"):
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        raise UsageError(f"no timm model matches '{a['timm']}': patterns take * wildcards, as in 'resnet*' or '*vit*'")
    width = max(len(r["name"]) for r in rows)
    print(f"{'model':<{width}}  pretrained (offline)")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['pretrained']}")
    return 0


def cmd_env(a: dict) -> int:
    from imgclf.compute.machine import format_env, machine_report

    if a.get("probe"):
        from imgclf.models.registry import get_spec

        get_spec(a["probe"])  # an unknown name: one line with 'did you mean', before any work
    probe = None
    if a.get("probe"):
        from imgclf.training.api import probe_precision

        probe = probe_precision(a["probe"], a.get("img_size"), a["batch_size"], a["refresh"])
    r = machine_report(probe)
    print(json.dumps(r, indent=2) if a.get("json") else format_env(r))
    return 0


def cmd_samples(a: dict) -> int:
    from imgclf.data.samples import save_samples

    check_output_folder(a["out"], "--out")
    paths = save_samples(a["data"], a["out"], split=a["split"], n=a["n"], data_root=a.get("data_root"))
    log.info("wrote %d images to %s", len(paths), a["out"])
    return 0


def cmd_serve(a: dict) -> int:
    """`imgclf serve`: imgclf-serve's own path (serve/main.py), plus --precision and PyTorch's thread count."""
    import argparse

    from imgclf.serve.main import serve
    from imgclf.serve.server import limit_malloc_arenas

    limit_malloc_arenas()  # first: before torch and numpy start threads
    threads = a.get("threads")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)  # a checkpoint runs on PyTorch's threads; onnxruntime sessions get the same
    return serve(argparse.Namespace(**a))


COMMANDS = {
    "samples": cmd_samples,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "check": cmd_check,
    "models": cmd_models,
    "serve": cmd_serve,
}


def cmd_launch(a: dict) -> int:
    from imgclf.compute.distributed import launch

    return launch(a["nproc"], a["argv"])


COMMANDS.update(
    {"export": cmd_export, "bench": cmd_bench, "env": cmd_env, "lr-find": cmd_lr_find, "launch": cmd_launch}
)


# --------------------------------------------------------------------------------------------- trust


def _add_tta(p: argparse.ArgumentParser, *, min_confidence: bool = False, export: bool = False) -> None:
    """--tta (evaluate, predict, export) and predict's --min-confidence: see calibration.py and tta.py."""
    p.add_argument(
        "--tta",
        choices=("none", "flip", "flip-crop"),
        help=(
            "bake test-time augmentation into the exported graph, and print the accuracy with and without it: "
            if export
            else "test-time augmentation: "
        )
        + "flip (the image and its mirror) or flip-crop (and two shifted crops, mirrored: 6 passes); their "
        "calibrated probabilities averaged; none: also switch off a model's built-in TTA (airnet) [the model's own]",
    )
    if min_confidence:
        p.add_argument(
            "--min-confidence",
            type=_number(float, gt=0, le=1),
            metavar="P",
            help='answer unsure (label null, "unsure": true; the top label and probability still given) when '
            "the top probability is below P, in (0, 1]",
        )


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature on the validation split and store it in the checkpoint (ECE before and after)",
        description="Temperature scaling (Guo et al. 2017): one T > 0 that minimises the negative log-likelihood "
        "of softmax(logits / T) on a split; stored in the checkpoint, where predict, evaluate, serve and every "
        "export apply it. Labels and accuracy do not change; the expected calibration error (ECE, 15 bins) "
        "before and after is printed. See docs/trust.md.",
    )
    _common(p)
    p.add_argument("weights", help="checkpoint to calibrate (rewritten in place), e.g. runs/NAME/best.pt")
    p.add_argument("--data", help="data to fit on (default: the data the model was trained on)")
    p.add_argument("--split", default="val", help="split to fit on: never the one you report results on [val]")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=256, help="images per batch [256]")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=_number(int, ge=0), help="decoding processes (default: the CPU cores, at most 4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_calibrate(a: dict) -> int:
    from imgclf.evaluation.calibration import calibrate, format_calibration

    r = calibrate(
        a["weights"],
        a.get("data"),
        split=a["split"],
        data_root=a.get("data_root"),
        batch_size=a["batch_size"],
        device=a["device"],
        workers=a.get("workers"),
    )
    print(json.dumps(r.to_dict(), indent=2) if a.get("json") else format_calibration(r))
    return 0


COMMANDS["calibrate"] = cmd_calibrate


# --------------------------------------------------------------------------------------------- active learning


def _add_active(sub) -> None:
    from imgclf.studies.active import DIVERSE_PREFILTER, STRATEGIES

    p = sub.add_parser(
        "select",
        help="active learning: pick the unlabelled images most worth labelling next",
        description="Score every image of a pool with a model (any format predict reads) and pick --budget of "
        "them by a strategy; writes OUT/selected.csv (path, score, predicted_label, probability) and "
        "OUT/contact_sheet.png. Strategies: entropy, margin, least-confidence (most uncertain first), random, "
        f"diverse (one pick per k-means cluster of the {DIVERSE_PREFILTER} x N most uncertain images on the "
        "model's penultimate features; checkpoints only). See docs/active_learning.md.",
    )
    _common(p)
    p.add_argument("weights", help="checkpoint (runs/NAME/best.pt) or a file from imgclf export")
    p.add_argument(
        "--pool", required=True, help="unlabelled images: a folder (searched recursively) or a CSV with a path column"
    )
    p.add_argument("--budget", type=_number(int, ge=1), required=True, help="images to select")
    p.add_argument("--strategy", default="entropy", choices=STRATEGIES, help="how to rank the pool [entropy]")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="MANIFEST",
        help="already-labelled images, left out of the pool: a CSV with a path column (relative to the CSV) or a "
        "folder; repeat for several",
    )
    p.add_argument("--out", help="output folder (default: select-STRATEGY next to the weights)")
    p.add_argument("--seed", type=int, default=0, help="for random and diverse [0]")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=32, help="images per batch [32]")
    p.add_argument("--device", default="auto")
    _add_inference_precision(p)
    _add_active_sim(sub)


def _add_active_sim(sub) -> None:
    p = sub.add_parser(
        "active-sim",
        help="simulate active learning on labelled data: accuracy against labels, per strategy",
        description="Hide the labels of the train split, start from --start of them, and each round fit a "
        "logistic regression on frozen features, select --budget more by each strategy and reveal their labels; "
        "accuracy on the test (else val) split every round, for --seeds seeds. Writes active_sim.csv, "
        "active_sim_summary.csv, active_sim.json and active_sim.png (accuracy against labels, one curve per "
        "strategy with its min-max band) to --out.",
    )
    _common(p)
    p.add_argument("--data", required=True, help="labelled data: a folder, a CSV, or cifar10/cifar100/digits")
    p.add_argument(
        "--strategies", default="entropy,margin,diverse,random", help="comma-separated [entropy,margin,diverse,random]"
    )
    p.add_argument("--start", type=_number(int, ge=1), default=20, help="labelled images at the start [20]")
    p.add_argument("--budget", type=_number(int, ge=1), default=20, help="images labelled per round [20]")
    p.add_argument("--rounds", type=_number(int, ge=1), default=5, help="rounds of selection [5]")
    p.add_argument("--seeds", type=_number(int, ge=1), default=3, help="repetitions with other start sets [3]")
    p.add_argument(
        "--features",
        default="efficientnet_lite0",
        metavar="MODEL_OR_CHECKPOINT",
        help="frozen backbone: a model with pretrained weights (imgclf models) or a checkpoint [efficientnet_lite0]",
    )
    p.add_argument("--img-size", type=_number(int, ge=1), help="input size for a registry model [its own]")
    p.add_argument("--pool-size", type=_number(int, ge=1), help="use a seeded subset of this many train images [all]")
    p.add_argument("--eval-size", type=_number(int, ge=1), help="evaluate on a seeded subset of this many images [all]")
    p.add_argument("--eval-split", help="split to measure accuracy on [test if the data has one, else val]")
    p.add_argument(
        "--start-mode",
        default="stratified",
        choices=("stratified", "random"),
        help="how the start set is drawn [stratified]",
    )
    p.add_argument("--out", default=os.path.join("runs", "active-sim"), help="output folder [runs/active-sim]")
    p.add_argument("--seed", type=int, default=0, help="first seed; the others follow it [0]")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=64, help="images per batch for the features [64]")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def cmd_select(a: dict) -> int:
    from imgclf.studies.active import format_selection, select

    sel = select(
        a["weights"],
        a["pool"],
        budget=a["budget"],
        strategy=a["strategy"],
        exclude=a["exclude"],
        out=a.get("out"),
        seed=a["seed"],
        device=a["device"],
        precision=a["precision"],
        batch_size=a["batch_size"],
    )
    print(format_selection(sel))
    return 0


def cmd_active_sim(a: dict) -> int:
    from imgclf.studies.active import format_simulation, simulate

    res = simulate(
        a["data"],
        strategies=a["strategies"],
        start=a["start"],
        budget=a["budget"],
        rounds=a["rounds"],
        seeds=a["seeds"],
        features=a["features"],
        img_size=a.get("img_size"),
        pool_size=a.get("pool_size"),
        eval_size=a.get("eval_size"),
        eval_split=a.get("eval_split"),
        start_mode=a["start_mode"],
        out=a["out"],
        seed=a["seed"],
        device=a["device"],
        batch_size=a["batch_size"],
        data_root=a.get("data_root"),
    )
    if a.get("json"):
        print(json.dumps({"setup": res.setup, "summary": res.summary, "versus_random": res.versus_random}, indent=2))
    else:
        print(format_simulation(res))
    return 0


COMMANDS.update({"select": cmd_select, "active-sim": cmd_active_sim})


# ------------------------------------------------------------------------------------------------ robustness


def _add_robustness(sub) -> None:
    p = sub.add_parser(
        "robustness",
        help="accuracy under FGSM / PGD attacks and common corruptions, with a JSON report and a plot",
        description="Accuracy of a model under L-infinity attacks (FGSM, PGD; checkpoints only: they need "
        "gradients) at each eps in pixel units of the [0, 1] image, and under common corruptions at severities "
        "1-5 after CIFAR-10-C (every format). Writes robustness.json and robustness.png.",
    )
    _common(p)
    p.add_argument("weights", help="checkpoint (runs/NAME/best.pt), or a file from imgclf export (corruptions only)")
    p.add_argument("--data", help="data to measure on (default: the data the model was trained on)")
    p.add_argument("--split", default="test", help="val, test or train [test]")
    p.add_argument("--attack", metavar="fgsm,pgd", help="attacks, comma-separated: fgsm, pgd")
    p.add_argument(
        "--eps",
        metavar="LIST",
        help="L-infinity radii in pixel units of the [0, 1] image, as fractions or decimals; eps 0 (clean) is "
        "always measured [1/255,2/255,4/255,8/255]",
    )
    p.add_argument("--steps", type=_number(int, ge=1), default=10, help="PGD steps [10]")
    p.add_argument("--step-size", metavar="ALPHA", help="PGD step in pixel units, as in 2/255 [2.5 * eps / steps]")
    p.add_argument("--corruptions", action="store_true", help="accuracy under common corruptions (any format)")
    p.add_argument("--severities", default="1,2,3,4,5", help="corruption severities, of 1-5 [1,2,3,4,5]")
    p.add_argument(
        "--limit",
        type=_number(int, ge=1),
        help="measure on N images of the split (a seeded choice, the same every run)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds PGD's random start and the corruptions' noise [0]")
    p.add_argument("--out", help="output folder (default: robustness-SPLIT next to the weights)")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=256, help="images per batch [256]")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=_number(int, ge=0), help="decoding processes (default: the CPU cores, at most 4)")
    p.add_argument("--json", action="store_true", help="print robustness.json instead of the table")


def cmd_robustness(a: dict) -> int:
    from imgclf.core.options import parse_eps
    from imgclf.evaluation.robustness import format_table, robustness

    if a.get("out"):
        check_output_folder(a["out"], "--out")
    step = a.get("step_size")
    if step is not None:
        values = parse_eps(step)
        if len(values) != 1:
            raise UsageError(f"--step-size '{step}': give one value, as in 2/255")
        step = values[0]
    r = robustness(
        a["weights"],
        a.get("data"),
        split=a["split"],
        attacks=a.get("attack") or (),
        eps=a.get("eps"),
        steps=a["steps"],
        step_size=step,
        corruptions=a["corruptions"],
        severities=a["severities"],
        limit=a.get("limit"),
        out=a.get("out"),
        batch_size=a["batch_size"],
        device=a["device"],
        seed=a["seed"],
        data_root=a.get("data_root"),
        workers=a.get("workers"),
    )
    print(json.dumps(r, indent=2) if a.get("json") else format_table(r))
    if not a.get("json"):
        log.info("wrote robustness.json and robustness.png to %s", r["out"])
    return 0


COMMANDS["robustness"] = cmd_robustness


# ------------------------------------------------------------------------------------------------ score


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="each training image's difficulty (a model's loss on it), for train --curriculum --difficulty FILE",
        description="The loss of a model on each training image, without augmentation, as a CSV "
        "path,label,split,loss,p_true,predicted,confidence: the training split, and the validation images carved "
        "from it when the data has no val split of its own. `imgclf train --curriculum easy-first --difficulty "
        "FILE` orders the images by it.",
    )
    _common(p)
    p.add_argument("weights", help="a reference model: checkpoint (runs/NAME/best.pt) or a file from imgclf export")
    p.add_argument("--data", help="data to score (default: the data the model was trained on)")
    p.add_argument("--out", help="CSV to write (default: difficulty.csv next to the weights)")
    p.add_argument("--data-root", help="where cifar10/cifar100 are kept")
    p.add_argument("--batch-size", type=_number(int, ge=1), default=256, help="images per batch [256]")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=_number(int, ge=0), help="decoding processes (default: the CPU cores, at most 4)")


def cmd_score(a: dict) -> int:
    from imgclf.training.curriculum import score

    r = score(
        a["weights"],
        a.get("data"),
        out=a.get("out"),
        batch_size=a["batch_size"],
        device=a["device"],
        workers=a.get("workers"),
        data_root=a.get("data_root"),
    )
    for path, reason in r["left_out"]:
        log.warning("left out %s: %s", path, reason)
    print(f"scored {r['images']} images (mean loss {r['mean_loss']:.4f}): {r['out']}")
    return 0


COMMANDS["score"] = cmd_score


# ------------------------------------------------------------------------------------------------ explain


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="Grad-CAM overlays: where in each image a checkpoint finds its evidence for a class",
        description="Grad-CAM (Selvaraju et al., 2017) on the model's last convolutional feature map, for the "
        "predicted class or --target LABEL, drawn over each original image: OUT/STEM_gradcam.png per image, "
        "OUT/explain.json, and with --sheet all of them on OUT/gradcam_sheet.png. Checkpoints only (exports give "
        "no gradients).",
    )
    _common(p)
    p.add_argument("weights", help="checkpoint (runs/NAME/best.pt)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument("--target", metavar="LABEL", help="explain this class for every image [the predicted class]")
    p.add_argument("--out", help="output folder (default: explain/ next to the weights)")
    p.add_argument("--sheet", action="store_true", help="also write every overlay on one contact sheet")
    p.add_argument(
        "--max-side", type=_number(int, ge=16), default=1024, help="overlay PNGs scaled down to this longer side [1024]"
    )
    p.add_argument("--batch-size", type=_number(int, ge=1), default=8, help="images per batch [8]")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per image")


def cmd_explain(a: dict) -> int:
    from imgclf.evaluation.explain import explain

    stdout = Stdout(keep_going=True)  # the overlays are the result: a closed stdout does not stop them

    def line(r: dict) -> str:
        if a.get("json"):
            return json.dumps(r)
        if "error" in r:
            return f"{r['path']}\tERROR\t{r['error']}"
        return f"{r['path']}\t{r['label']}\t{r['probability']:.3f}\tmap for {r['target']}\t{r['overlay']}"

    r = explain(
        a["weights"],
        a["images"],
        target=a.get("target"),
        out=a.get("out"),
        device=a["device"],
        sheet=a["sheet"],
        max_side=a["max_side"],
        batch_size=a["batch_size"],
        on_row=lambda row: stdout.print(line(row)),
    )
    done = len(r["rows"]) - r["errors"]
    log.info("wrote %d overlays to %s (Grad-CAM on %s)", done, r["out"], r["layer"] or "no layer")
    if r["errors"]:
        raise ImgclfError(f"{r['errors']} of {len(r['rows'])} images could not be explained (listed above)")
    return EXIT_BROKEN_PIPE if stdout.closed else 0


COMMANDS["explain"] = cmd_explain


# ------------------------------------------------------------------------------------------------ report


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild report.html of a run or an evaluation folder (one self-contained page to look at)",
        description="Write FOLDER/report.html: the machine and data, the curves, the confusion matrix, the "
        "per-class table, calibration, the surest mistakes with their Grad-CAM, the data check and the exports, "
        "in one file that opens offline. Training and evaluate write it too.",
    )
    _common(p)
    p.add_argument("folder", metavar="RUN_OR_EVAL_DIR", help="runs/NAME, or an eval-SPLIT folder")


def cmd_report(a: dict) -> int:
    from imgclf.evaluation.report import build_report

    print(build_report(a["folder"]))
    return 0


COMMANDS["report"] = cmd_report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    a = vars(ns)
    nproc = a.pop("nproc", None)
    verbose = bool(a.pop("verbose", False))
    quiet = bool(a.pop("quiet", False)) or _rank() > 0  # under torchrun, rank 0 alone reports progress
    a["quiet"] = quiet
    if not a.get("command"):
        parser.print_help()
        return 2
    _setup_logging(verbose, quiet)
    if nproc is not None and nproc > 1:  # the same command, N times under torchrun (train checks its options first)
        from imgclf.compute.distributed import strip_nproc

        a |= {"nproc": nproc, "argv": strip_nproc(sys.argv[1:] if argv is None else list(argv))}
        if a["command"] != "train":
            a["command"] = "launch"
    request_huge_pages()  # before the command imports torch
    _rank_threads()
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        previous = signal.signal(signal.SIGTERM, _raise_terminated)  # `serve` replaces it with uvicorn's own
    try:
        with shown(not quiet):  # bars and progress lines, for this command only
            return COMMANDS[a.pop("command")](a)
    except Terminated:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # torchrun stops the ranks when one of them fails
            print(
                f"imgclf: rank {_rank()} terminated (torchrun stops every rank when one fails or the job is stopped; "
                "its report follows): a training run continues from its last whole checkpoint with --resume "
                "RUN_DIR/last.pt",
                file=sys.stderr,
            )
        else:
            print("imgclf: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except ImgclfError as e:
        if verbose:
            log.exception("error")
        print(f"imgclf: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader went away (`| head -1`): stop quietly, as a tool ended by SIGPIPE
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except Exception as e:
        if verbose:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"imgclf: error: {type(e).__name__}: {first} (run with --verbose for the traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run() -> None:
    code = main()
    try:  # what print() left in the buffer: a reader that has gone shows up here, not in the command
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
