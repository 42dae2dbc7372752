"""The table of `imgclf`'s commands, the parser generated from it, and the dispatcher that runs one.

A command is one `Command` entry: its name, the line `imgclf --help` shows, its options object (cli/options.py;
its flags are generated from it) and the function that runs it, named "module:function" and imported only when
the command runs (by `dispatch`, the one place a command's implementation is imported): so `imgclf --help` and
`imgclf check` never import torch, and every other command imports only what it uses.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from imgclf.cli import options as o
from imgclf.cli.console import world_size
from imgclf.cli.embed_options import EmbedOptions, SimilarOptions
from imgclf.cli.export_options import BenchOptions, ExportOptions
from imgclf.core.fileio import user_cache_home
from imgclf.core.lazy import Named
from imgclf.core.options import add_options, options_from
from imgclf.core.shared_options import MAX_PIXELS, Console, PixelLimit
from imgclf.core.tracking import fetched
from imgclf.core.version import __version__
from imgclf.serve.options import ServeCommandOptions
from imgclf.training.options import FIELDS, TrainConfig, make_config


@dataclass(frozen=True)
class Command:
    """One command: `run` ("module:function") is called with the options object made from the flags given."""

    name: str
    help: str  # its line in `imgclf --help`
    options: type  # its options dataclass: one flag per option field
    run: str
    description: str = ""  # the text at the top of `imgclf NAME --help` (default: `help`)
    train: bool = False  # also every TrainConfig option and --config; the options object's `train` holds them
    nproc: bool = False  # --nproc N: the same command under torchrun, N processes on this machine
    intermixed: bool = False  # PATHs may follow options (predict)
    decodes: bool = True  # it decodes image files: --max-pixels, the one pixel limit (core/shared_options.py)


TABLE = [
    Command(
        "train",
        "train a classifier",
        o.TrainOptions,
        "imgclf.cli.run_train:train_command",
        train=True,
        nproc=True,
        description="Train a classifier; the run goes to OUT/NAME. Under torchrun (or with --nproc N) each rank "
        "trains on its shard of every epoch (DistributedDataParallel); --batch-size is per rank.",
    ),
    Command(
        "lr-find",
        "learning-rate range test: loss against lr, a plot and a suggested lr",
        o.LrFindOptions,
        "imgclf.cli.run_train:lr_find_command",
        train=True,
        description="The learning-rate range test (Smith 2015; fastai's lr_find) for the run the train options "
        "describe: a few steps with the lr rising exponentially, the loss curve in OUT/NAME/lr_find.png and "
        ".json, and a suggested lr (fastai's valley). `imgclf train --lr auto` runs it first and trains at its "
        "suggestion.",
    ),
    Command(
        "tune",
        "search for good training options (Optuna): trials, pruning, best.yaml",
        o.TuneOptions,
        "imgclf.cli.run_train:tune_command",
        train=True,
        description="Search training options with Optuna: TPE sampling, Hyperband pruning fed by each epoch's "
        "validation metric, the study in OUT/NAME/study.db (--resume auto continues a killed one), every trial a "
        "run folder in OUT/NAME/trials, the best options as OUT/NAME/best.yaml for `imgclf train --config`, and "
        "OUT/NAME/tune.html. The train options given are the base every trial starts from.",
    ),
    Command(
        "evaluate",
        "metrics, per-class report and plots for a checkpoint on a split",
        o.EvaluateOptions,
        "imgclf.cli.run_evaluate:evaluate_command",
        nproc=True,
    ),
    Command(
        "predict",
        "label images, folders of images or a list of millions of files",
        o.PredictOptions,
        "imgclf.cli.run_predict:predict_command",
        nproc=True,
        intermixed=True,
        description="Label images. With --output the rows are written as each batch finishes (bounded memory); "
        "a stopped run continues with --resume; under torchrun each rank predicts its share and rank 0 merges "
        "them into the one --output file.",
    ),
    Command(
        "embed",
        "each image's features (normalised) as a Parquet file, with path, label and split, for similar",
        EmbedOptions,
        "imgclf.cli.run_embed:embed_command",
        nproc=True,
        intermixed=True,
        description="Write the penultimate features of a model (L2-normalised) for every image of a data set "
        "(every split, with labels) or of files, folders and --files-from, to a Parquet file that records the "
        "model that made them. Streamed as predict streams (--resume, torchrun). See docs/embeddings.md.",
    ),
    Command(
        "similar",
        "the images of an embedding index nearest to query images, with distances and a contact sheet",
        SimilarOptions,
        "imgclf.cli.run_embed:similar_command",
        description="Embed the query images with WEIGHTS and find their nearest images in --index (written by "
        "imgclf embed with the same model) by cosine similarity (faiss); distance sqrt(2 - 2 cos). A table, or "
        "JSON lines with --json, and a contact sheet with --sheet. See docs/embeddings.md.",
    ),
    Command(
        "export",
        "export a checkpoint (TorchScript, pt2, ONNX, int8), verified against PyTorch",
        ExportOptions,
        "imgclf.cli.run_export:export_command",
        description="Export a checkpoint to a deployment format. The file is written only after its logits "
        "match eager PyTorch on real images; it carries the class names and preprocessing.",
    ),
    Command(
        "bench",
        "latency, images/s, size (and accuracy) of checkpoints and exported files",
        BenchOptions,
        "imgclf.cli.run_export:bench_command",
        description="Time checkpoints (eager fp32 NCHW, fp32 channels_last, bf16 autocast channels_last) and "
        "exported files on the same images, in one run.",
    ),
    Command(
        "select",
        "active learning: pick the unlabelled images most worth labelling next",
        o.SelectOptions,
        "imgclf.cli.run_predict:select_command",
        description=o.SELECT_DESCRIPTION,
    ),
    Command(
        "active-sim",
        "simulate active learning on labelled data: accuracy against labels, per strategy",
        o.ActiveSimOptions,
        "imgclf.cli.run_predict:active_sim_command",
        description="Hide the labels of the train split, start from --start of them, and each round fit a "
        "logistic regression on frozen features, select --budget more by each strategy and reveal their labels; "
        "accuracy on the test (else val) split every round, for --seeds seeds. Writes active_sim.csv, "
        "active_sim_summary.csv, active_sim.json and active_sim.png (accuracy against labels, one curve per "
        "strategy with its min-max band) to --out.",
    ),
    Command(
        "robustness",
        "accuracy under FGSM / PGD attacks and common corruptions, with a JSON report and a plot",
        o.RobustnessOptions,
        "imgclf.cli.run_evaluate:robustness_command",
        description="Accuracy of a model under L-infinity attacks (FGSM, PGD; checkpoints only: they need "
        "gradients) at each eps in pixel units of the [0, 1] image, and under common corruptions at severities "
        "1-5 after CIFAR-10-C (every format). Writes robustness.json and robustness.png.",
    ),
    Command(
        "score",
        "each training image's difficulty (a model's loss on it), for train --curriculum --difficulty FILE",
        o.ScoreOptions,
        "imgclf.cli.run_evaluate:score_command",
        description="The loss of a model on each training image, without augmentation, as a CSV "
        "path,label,split,loss,p_true,predicted,confidence: the training split, and the validation images carved "
        "from it when the data has no val split of its own. `imgclf train --curriculum easy-first --difficulty "
        "FILE` orders the images by it.",
    ),
    Command(
        "explain",
        "Grad-CAM overlays: where in each image a checkpoint finds its evidence for a class",
        o.ExplainOptions,
        "imgclf.cli.run_evaluate:explain_command",
        description="Grad-CAM (Selvaraju et al., 2017) on the model's last convolutional feature map, for the "
        "predicted class or --target LABEL, drawn over each original image: OUT/STEM_gradcam.png per image, "
        "OUT/explain.json, and with --sheet all of them on OUT/gradcam_sheet.png. Checkpoints only (exports give "
        "no gradients).",
    ),
    Command(
        "calibrate",
        "fit a temperature on the validation split and store it in the checkpoint (ECE before and after)",
        o.CalibrateOptions,
        "imgclf.cli.run_evaluate:calibrate_command",
        description="Temperature scaling (Guo et al. 2017): one T > 0 that minimises the negative log-likelihood "
        "of softmax(logits / T) on a split; stored in the checkpoint, where predict, evaluate, serve and every "
        "export apply it. Labels and accuracy do not change; the expected calibration error (ECE, 15 bins) "
        "before and after is printed. See docs/trust.md.",
    ),
    Command(
        "report",
        "rebuild report.html of a run or an evaluation folder (one self-contained page to look at)",
        o.ReportOptions,
        "imgclf.cli.run_evaluate:report_command",
        description="Write FOLDER/report.html: the machine and data, the curves, the confusion matrix, the "
        "per-class table, calibration, the surest mistakes with their Grad-CAM, the data check and the exports, "
        "in one file that opens offline. Training and evaluate write it too.",
    ),
    Command(
        "card",
        "rebuild MODEL_CARD.md of a trained model (what it is for, how well it does, where it fails)",
        o.CardOptions,
        "imgclf.cli.run_evaluate:card_command",
        description="Write MODEL_CARD.md beside the checkpoint (Hugging Face's model-card layout): the model and "
        "its classes, intended and out-of-scope use, the training data and options, every evaluation found beside "
        "it (results.json, eval-*/eval.json with --ood-data's results, robustness-*/robustness.json) with the "
        "per-class tables and calibration, the limitations those numbers show, and how to load it. Training "
        "writes it too; run this after evaluate, robustness or calibrate to add what they measured.",
        decodes=False,  # reads JSON files and the checkpoint
    ),
    Command(
        "check",
        "find corrupt, truncated, duplicate and leaked files in a data folder",
        o.CheckOptions,
        "imgclf.cli.run_check:check_command",
    ),
    Command(
        "samples",
        "save a few images of a split as files (e.g. digits), to try predict on",
        o.SamplesOptions,
        "imgclf.cli.run_tools:samples_command",
        decodes=False,  # copies files, writes in-memory arrays
    ),
    Command(
        "env",
        "this machine as imgclf sees it: CPU instructions, GPU, versions, what auto picks",
        o.EnvOptions,
        "imgclf.cli.run_tools:env_command",
        decodes=False,
        description="The machine as imgclf sees it: CPU model and the instruction sets that decide which "
        "kernels run, GPU, versions, threads, and what `auto` picks here.",
    ),
    Command(
        "models",
        "list models, parameter counts and offline pretrained weights",
        o.ModelsOptions,
        "imgclf.cli.run_tools:models_command",
        decodes=False,
    ),
    Command(
        "serve",
        "HTTP service and web page for a checkpoint or exported model",
        ServeCommandOptions,
        "imgclf.cli.run_serve:serve_command",
        decodes=False,  # its own --max-pixels (the same declaration), applied to every upload
        description="Serve a model over HTTP: POST /predict, GET /health /ready /metadata /metrics, "
        "a web page at /, OpenAPI docs at /docs.",
    ),
]
BY_NAME = {c.name: c for c in TABLE}
# What runs each command: a test may put a function of its own here (it is called with the options object).
COMMANDS = {c.name: Named(c.run) for c in TABLE}
LAUNCH = Named("imgclf.cli.run_train:launch")  # --nproc N: the pre-checks, then torchrun
RANK_THREADS = Named("imgclf.cli.run_train:rank_threads")
PIXEL_LIMIT = Named("imgclf.data.images:pixel_limit")  # PIL and NumPy: imported only when a command runs


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)  # `--epoch 3` is a typo to report, not a prefix of --epochs
        super().__init__(*args, **kw)

    def error(self, message):  # one line, exit 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class IntermixedParser(Parser):
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


def build_parser() -> argparse.ArgumentParser:
    """`imgclf`'s parser: -v, -q and --version, and a subparser per command of the table."""
    parser = Parser(prog="imgclf", description="From a folder of images to a trained, evaluated classifier.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    add_options(parser, Console)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for cmd in TABLE:
        add_command(sub, cmd)
    return parser


def add_command(sub, cmd: Command) -> None:
    """The command's parser: -v and -q (unless its options declare them), its options, then TrainConfig's (with
    --x/--no-x for every bool, as a YAML file may set it) and --nproc where the table says."""
    p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
    if cmd.intermixed:
        p.__class__ = IntermixedParser  # add_parser makes every subcommand's parser of one class
    add_options(p, Console, skip={f.name for f in dataclasses.fields(cmd.options)})
    add_options(p, cmd.options)
    if cmd.decodes:
        add_options(p, PixelLimit)
    if cmd.train:
        add_options(p, TrainConfig, negatable=True)
    if cmd.nproc:
        add_options(p, o.Launch)


def options_of(cmd: Command, values: dict):
    """The command's options object from the parsed `values` (the flags given; the others keep their defaults),
    checked across options (`check(given)`, where the object has one) before any work."""
    if cmd.train:  # the config records the flags and YAML keys given as the options set (TrainConfig.explicit)
        given = {k: v for k, v in values.items() if k in FIELDS}
        values = values | {"train": make_config(given, source="command line", config_file=values.get("config"))}
    options = options_from(cmd.options, values)
    if hasattr(options, "check"):
        options.check(frozenset(values))
    return options


def dispatch(name: str, values: dict, *, nproc: int | None, argv: list[str]) -> int:
    """Run command `name` with the parsed `values`: its exit code. With `nproc` (N > 1), the same command line
    `argv` under torchrun instead (train's options are checked first); under torchrun, each rank's threads are
    set first."""
    options = fetched(options_of(BY_NAME[name], values), user_cache_home())  # WEIGHTS models:/NAME/VERSION
    if nproc:
        if options.__dict__.get("weights") != values.get("weights"):  # each rank opens the fetched file
            argv = [options.weights if a == values["weights"] else a for a in argv]
        return LAUNCH(options, nproc, argv)
    if world_size() > 1:
        RANK_THREADS()
    if not BY_NAME[name].decodes:
        return COMMANDS[name](options)
    with PIXEL_LIMIT(values.get("max_pixels", MAX_PIXELS.default)):  # --max-pixels, for every image decoded
        return COMMANDS[name](options)
