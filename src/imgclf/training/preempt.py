"""Preemption and automatic resume: a stop asked for during training (SIGTERM, through the CLI's handler) ends
the run at the next step boundary with a checkpoint that holds the position inside the epoch; `--resume auto`
(and a torchrun worker restarted by `--max-restarts`) continues the run folder's latest checkpoint, or starts
the run when there is none, and says so when the run is finished.

    StopRequest          set by a signal handler the CLI installs (library code leaves signals alone)
    agreed(request, world)   whether every rank stops now: one all-reduce, made only at check steps
    Position             where an epoch stopped: its batches done, its first step, its lr and seconds, and each
                         rank's partial sums, random generators and callbacks' states
    auto_resume(cfg)     --resume auto / a restarted worker: the checkpoint to continue, a fresh start, or finished

Under torchrun one rank's signal stops every rank at the same step: the ranks agree through an all-reduce of the
flag, made every `CHECK_EVERY` steps (and after each epoch) rather than at every step, so a run that is never
stopped pays one tiny collective per CHECK_EVERY steps, and a stopped one runs at most CHECK_EVERY - 1 steps more.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
from dataclasses import dataclass, field

import torch

from imgclf.compute import distributed
from imgclf.core.errors import CheckpointError, ImgclfError, UsageError
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.options import TrainConfig, check_resumable

log = logging.getLogger(__name__)

CHECK_EVERY = 8  # under torchrun: the steps between two agreements on whether to stop (one process: every step)


class RunFinished(ImgclfError):
    """--resume auto on a run that has finished: nothing to do (exit code 0). `results` is its results.json."""

    exit_code = 0

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results


class StopRequest:
    """A request to stop training at the next step boundary, saved where it is. `set()` is safe in a signal
    handler; the Trainer reads `is_set()`. `signum`: the signal that set it (143 = 128 + SIGTERM by default)."""

    def __init__(self):
        self._set, self.signum = False, signal.SIGTERM
        self.armed = False  # the Trainer's epochs are running: a stop waits for the next step boundary

    def set(self, signum: int | None = None) -> None:
        self._set = True
        if signum is not None:
            self.signum = signum

    def is_set(self) -> bool:
        return self._set


def agreed(request: StopRequest | None, world: distributed.World, device: torch.device) -> bool:
    """Whether the run stops now: this process's request, or under torchrun any rank's (an all-reduce: every
    rank must call this at the same step)."""
    mine = request is not None and request.is_set()
    if not world.distributed:
        return mine
    flag = torch.tensor([1 if mine else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def check_step(step: int, world: distributed.World) -> bool:
    """Whether the stop is agreed after optimisation step `step` (the same answer on every rank)."""
    return not world.distributed or step % CHECK_EVERY == 0


# ------------------------------------------------------------------------------------------------ the position


@dataclass
class Position:
    """Where an epoch stopped. `batches`: this epoch's batches trained (on each rank), `step0`: the optimisation
    step the epoch began at, `lr`: its learning rate then (metrics.csv's column), `seconds`: its time so far;
    `ranks`: per rank, the partial sums of the epoch's train_loss and train_acc, the random generators' states
    and the callbacks' states."""

    batches: int
    step0: int
    lr: float
    seconds: float
    ranks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "step0": self.step0,
            "lr": self.lr,
            "seconds": self.seconds,
            "ranks": self.ranks,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Position:
        return cls(int(d["batches"]), int(d["step0"]), float(d["lr"]), float(d["seconds"]), list(d["ranks"]))


def rank_part(sums: tuple, gen: torch.Generator, aug: torch.Generator, device: torch.device, callbacks) -> dict:
    """This rank's part of a Position: the epoch's partial sums, its generators' states, its callbacks' states."""
    rng = {"order": gen.get_state(), "torch": torch.get_rng_state()}
    if aug is not gen:
        rng["aug"] = aug.get_state()
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    states = {cb.state_key: s for cb in callbacks if (s := cb.state_dict()) is not None}
    loss_sum, correct, seen = sums
    # correct: a count, or (multi-label) a sum of fractions of labels right: kept as it is
    correct = correct if isinstance(correct, float) else int(correct)
    return {"loss_sum": float(loss_sum), "correct": correct, "seen": int(seen), "rng": rng, "callbacks": states}


def restore_rng(part: dict, gen: torch.Generator, aug: torch.Generator, device: torch.device) -> None:
    """The generators as they were when the epoch stopped (after its order is drawn, before its next batch)."""
    rng = part["rng"]
    gen.set_state(rng["order"])
    if aug is not gen and "aug" in rng:
        aug.set_state(rng["aug"])
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def check_position(ckpt: dict | None, world: distributed.World, path: str) -> None:
    """A checkpoint saved inside an epoch continues on the number of ranks it was saved on (each rank's
    generators and partial sums are its own)."""
    state = (ckpt or {}).get("train_state") or {}
    if not state.get("position"):
        return
    saved = int(state.get("world_size", 1))
    if saved != world.size:
        epoch = int(state["epoch"]) + 1
        raise UsageError(
            f"'{path}' was saved inside epoch {epoch} on {saved} rank(s): resume it on {saved} (the position inside "
            f"an epoch belongs to its ranks), or from a whole epoch's checkpoint (epoch_N.pt) on any number"
        )


# ------------------------------------------------------------------------------------------------ torchrun restarts


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 without torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def may_restart() -> bool:
    """Whether torchrun may restart this worker group (--max-restarts above 0)."""
    try:
        return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    except ValueError:
        return False


def elastic_name(cfg: TrainConfig) -> str | None:
    """A new run's folder name under torchrun --max-restarts without --name: MODEL-DATA-RUNID, where RUNID is
    the rendezvous id that torchrun gives every restart of the group, so that restarted ranks find the run."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if cfg.name or not may_restart() or not run_id:
        return cfg.name
    data = os.path.basename(os.path.normpath(str(cfg.data))) or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.model}-{data}-{run_id[:12]}")


# ------------------------------------------------------------------------------------------------ --resume auto


def wants_auto(cfg: TrainConfig) -> bool:
    """--resume auto, or a worker torchrun restarted (which continues its run wherever it stopped)."""
    return cfg.resume == "auto" or restart_count() > 0


def run_folder(cfg: TrainConfig) -> str:
    """The folder --resume auto continues: the one of the checkpoint given, else OUT/NAME."""
    if cfg.resume and cfg.resume != "auto":
        return os.path.dirname(os.path.abspath(cfg.resume))
    name = elastic_name(cfg)
    if not name:
        raise UsageError(
            "--resume auto continues the run in OUT/NAME: give it a --name (the same on every re-run of the command)"
        )
    return os.path.join(cfg.out, name)


def latest_checkpoint(folder: str) -> tuple[str, dict] | None:
    """(path, checkpoint) of the folder's latest whole checkpoint with a training state: last.pt (written last,
    after a whole epoch or at a stop inside one), else the newest epoch_N.pt that reads; None when there is none."""
    if not os.path.isdir(folder):
        return None
    epochs = sorted((int(m.group(1)), f) for f in os.listdir(folder) if (m := re.fullmatch(r"epoch_(\d+)\.pt", f)))
    for name in ["last.pt", *(f for _, f in reversed(epochs))]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            ckpt = load_checkpoint(path)
            check_resumable(path, ckpt)
        except CheckpointError as e:
            log.warning("--resume auto: %s; trying an older checkpoint", e)
            continue
        return path, ckpt
    return None


def auto_resume(cfg: TrainConfig) -> tuple[TrainConfig, bool, dict | None]:
    """--resume auto (or a restarted torchrun worker): (cfg with `resume` the checkpoint to continue, or None
    to start the run in its folder; whether that folder may be started again; the checkpoint). Raises RunFinished when the run
    has finished (its results.json is that of its latest checkpoint, and no more epochs are asked)."""
    folder = run_folder(cfg)
    found = latest_checkpoint(folder)
    if found is None:
        log.info("--resume auto: no checkpoint in %s: starting the run", folder)
        return cfg.resolved(resume=None, name=os.path.basename(folder)), True, None
    path, ckpt = found
    state, own = ckpt["train_state"], int(ckpt["config"].get("epochs", 0))
    asked = cfg.epochs if "epochs" in cfg.explicit else own
    results = read_results(os.path.join(folder, "results.json"))
    done = int(state["epoch"])
    if results is not None and not state.get("position") and _ended_at(results, state) and asked <= own:
        raise RunFinished(
            f"{folder} is finished (epoch {done} of {own}{', stopped early' if results.get('stopped_early') else ''}"
            f"): nothing to do; its results are in {os.path.join(folder, 'results.json')} (pass --epochs N to "
            "train longer)",
            {**results, "run_dir": folder, "finished": True},
        )
    where = f"inside epoch {done + 1}" if state.get("position") else f"the end of epoch {done}"
    log.info("--resume auto: continuing %s from %s (%s)", folder, path, where)
    ckpt["resume_auto"] = True  # in memory: a run whose last epoch is done but not yet reported is reported
    return cfg.resolved(resume=path), False, ckpt


def _ended_at(results: dict, state: dict) -> bool:
    """Whether results.json was written by the run's end at this training state."""
    return results.get("epochs") == len(state.get("rows") or []) and results.get("steps") == int(state["step"])


def read_results(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None
