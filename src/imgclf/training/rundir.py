"""RunDir: the one owner of a run's folder (`runs/NAME/`) and of everything written there.

    config.yaml     the resolved options (rewritten when --time-budget fixes the number of steps)
    split.csv       the validation split carved from train, when the data had none
    fixes_applied.csv   the rows of --apply-fixes's file that were applied
    lr_find.json, lr_find.png   --lr auto's range test
    left_out.csv    files that could not be read, with the reason
    metrics.csv     one row per epoch; TensorBoard events beside it (scalars, and histograms if asked)
    train.log       the run's story: the Trainer's lines always, other imgclf modules' at the caller's log level
    last.pt, best.pt, epoch_N.pt, results.json, curves.png and the validation plots

Logging is not configured here: the Trainer's own lines go to train.log directly and to the
`imgclf.training.trainer` logger; a handler on the `imgclf` logger (removed on close, no level changed) adds what
other modules log.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time

from imgclf.core.errors import UsageError
from imgclf.core.escape import csv_cell
from imgclf.core.fileio import atomic_open, remove_stale_temps, write_json
from imgclf.core.options import save_yaml
from imgclf.data.fixes import write_applied
from imgclf.data.sources import write_split_manifest
from imgclf.models.checkpoint import save_checkpoint
from imgclf.training.lr_find import write_result as write_lr_find

log = logging.getLogger("imgclf.training.trainer")  # the run's own lines (train.log has them already)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds"]
EMA_COLUMNS = ["ema_val_loss", "ema_val_acc", "ema_val_macro_f1"]
ROBUST_COLUMNS = ["val_robust_acc"]  # --adv-train's PGD-10 accuracy on validation images
# multi-label (training/multilabel.py): train_acc is the labels decided right at 0.5, the F1s at 0.5
MULTILABEL_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_mAP", "val_micro_f1", "val_macro_f1"]
MULTILABEL_COLUMNS += ["lr", "seconds"]
MULTILABEL_EMA_COLUMNS = ["ema_val_loss", "ema_val_mAP", "ema_val_micro_f1", "ema_val_macro_f1"]


# what a run writes before its first checkpoint: --resume auto starts a folder holding only these again
STARTED_FILES = re.compile(
    r"^(config\.yaml|train\.log|split\.csv|fixes_applied\.csv|left_out\.csv|lr_find\.(png|json)|events\.out\..*|\..*\.tmp)$"
)


def only_started(folder: str) -> bool:
    """Whether `folder` holds nothing but what a run writes before its first checkpoint (or nothing)."""
    return not os.path.isdir(folder) or all(STARTED_FILES.match(f) for f in os.listdir(folder))


def new_run_path(out: str, name: str | None, model: str, data: str, *, again: bool = False) -> str:
    """OUT/NAME (refused if it holds files; `again`, --resume auto: unless they are only those of a run stopped
    before its first checkpoint), or OUT/MODEL-DATA numbered to the first free one."""
    if name:
        d = os.path.join(out, name)
        if os.path.exists(d) and os.listdir(d) and not (again and only_started(d)):
            raise UsageError(
                f"run directory '{d}' already exists: choose another --name, or continue it with --resume {d}/last.pt"
            )
        return d
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(str(data))) or "data")
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)  # timm:resnet18 -> timm_resnet18: a colon is no folder name
    base = os.path.join(out, f"{model}-{data}")
    d, n = base, 2
    while os.path.exists(d) and os.listdir(d):
        d, n = f"{base}-{n}", n + 1
    return d


class _NotTrainer(logging.Filter):
    """train.log's handler takes other modules' records; the Trainer's own lines are written directly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != log.name


class _NoWriter:
    """TensorBoard on the ranks that do not write (torchrun's rank 0 writes): every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kw: None


class RunDir:
    """`write=False` (the ranks after 0 under torchrun): the same calls, nothing written, lines logged at debug.
    Every file of the run folder is written through a method here, so that rank 0 alone writes: ranks that each
    wrote the same file raced over the folder and each other's temporary files (issue 22)."""

    def __init__(
        self, path: str, *, ema: bool = False, robust: bool = False, write: bool = True, multilabel: bool = False
    ):
        self.path, self.writes = path, write
        self.columns = METRIC_COLUMNS + (EMA_COLUMNS if ema else []) + (ROBUST_COLUMNS if robust else [])
        if multilabel:  # metrics.csv's columns of a multi-label run
            self.columns = MULTILABEL_COLUMNS + (MULTILABEL_EMA_COLUMNS if ema else [])
        self._file = self._handler = None
        self._writer = None if write else _NoWriter()

    def __enter__(self) -> RunDir:
        if not self.writes:
            return self
        os.makedirs(self.path, exist_ok=True)
        remove_stale_temps(self.path)  # checkpoints half-written by a run that was killed
        self._file = open(self.file("train.log"), "a")
        self._handler = logging.StreamHandler(self._file)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._handler.addFilter(_NotTrainer())
        logging.getLogger("imgclf").addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if not self.writes:
            return
        logging.getLogger("imgclf").removeHandler(self._handler)
        if self._writer is not None:
            self._writer.close()
        self._file.close()

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def say(self, level: int, msg: str, *args, echo: bool = True) -> None:
        """One line of the run's story: always into train.log, and (`echo`) to the logger at the caller's level."""
        text = msg % args if args else msg
        if not self.writes:
            log.debug("%s", text)
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file.write(f"{stamp} {logging.getLevelName(level)} {text}\n")
        self._file.flush()
        if echo:
            log.log(level, "%s", text)

    def info(self, msg: str, *args) -> None:
        self.say(logging.INFO, msg, *args)

    def warning(self, msg: str, *args) -> None:
        self.say(logging.WARNING, msg, *args)

    @property
    def writer(self):
        """TensorBoard events; opened on first use."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - tensorboard: only when a run logs

            self._writer = SummaryWriter(self.path)
        return self._writer

    def purge_after(self, epoch: int) -> None:
        """A resumed run rewrites epochs after `epoch`: TensorBoard drops what a killed run logged past it."""
        if not self.writes:
            return
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - tensorboard: only when a run logs

        self._writer = SummaryWriter(self.path, purge_step=epoch + 1)

    def write_config(self, config: dict) -> None:
        if self.writes:
            save_yaml(config, self.file("config.yaml"))

    def write_split(self, source) -> None:
        """split.csv: the validation split carved from train (every rank carves the same one; rank 0 writes it)."""
        if self.writes:
            write_split_manifest(source, self.file("split.csv"))

    def write_fixes(self, applied) -> None:
        """fixes_applied.csv: exactly the rows --apply-fixes applied (data/fixes.Applied)."""
        if self.writes:
            write_applied(applied, self.file("fixes_applied.csv"))

    def write_lr_find(self, result: dict) -> None:
        """--lr auto's range test: lr_find.json and lr_find.png."""
        if self.writes:
            write_lr_find(result, self.path)

    def write_left_out(self, left_out: list[tuple[str, str, str]]) -> None:
        if not self.writes:
            return
        with atomic_open(self.file("left_out.csv"), newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "path", "reason"])
            w.writerows([split, csv_cell(path), csv_cell(why)] for split, path, why in left_out)

    def log_epoch(self, rows: list[dict]) -> None:
        """metrics.csv with every row so far, and the last row's scalars in TensorBoard."""
        if not self.writes:
            return
        with atomic_open(self.file("metrics.csv"), newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in self.columns})
        row = rows[-1]
        for k in self.columns[1:]:
            if row.get(k) is not None:
                self.writer.add_scalar(k, row[k], row["epoch"])
        self.writer.flush()

    def save(self, ckpt: dict, name: str) -> None:
        if self.writes:
            save_checkpoint(ckpt, self.file(name))

    def write_results(self, results: dict) -> None:
        if self.writes:
            write_json(results, self.file("results.json"))
