"""MODEL_CARD.md: what a trained model is for, how well it does and where it fails, in one Markdown file beside its
checkpoint, after Hugging Face's model-card layout (YAML metadata, then model details, uses, limitations, how to
get started, training details, evaluation, technical specifications, citation).

`write_card(weights)` reads what the run folder around the checkpoint already holds, nothing measured again:
the checkpoint (model, classes, preprocessing, options, temperature, out-of-distribution record), results.json
(the best epoch's validation metrics with the per-class table, calibration, the data's counts and fingerprint,
the software and machine), metrics.csv, and the measurements made since next to it: `imgclf evaluate`'s
eval-*/eval.json (a test split; `--ood-data`'s "ood" block) and `imgclf robustness`'s robustness-*/robustness.json,
each kept when it measured this checkpoint or an export of it in the same folder (the same file stem). The card
holds nothing that changes between two builds of the same files (no build time), so `imgclf card` rebuilds it
identically, and picks up what was measured since. The text is made in card_sections.py; every user string
(class names, paths) goes through core/escape.py's `md_text` and `md_code`.

Training writes it (rank 0, training/callbacks/report.py), `imgclf card WEIGHTS` rebuilds it, and `imgclf export`
points every exported file at it (exporting/export.py: `card_pointer`)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

from imgclf.core.errors import UsageError
from imgclf.core.fileio import atomic_open
from imgclf.evaluation.card_sections import render
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.models.registry import get_spec

log = logging.getLogger(__name__)

CARD_NAME = "MODEL_CARD.md"


@dataclass
class CardFacts:
    """What a card is made of, read once from the checkpoint and the folder around it."""

    weights: str  # the checkpoint, absolute
    sha256: str
    ckpt: dict  # the checkpoint without its weights
    results: dict = field(default_factory=dict)  # results.json ({} when absent)
    rows: list[dict] = field(default_factory=list)  # metrics.csv
    evals: list[tuple[str, dict]] = field(default_factory=list)  # (folder name, eval.json), by folder name
    robustness: list[tuple[str, dict]] = field(default_factory=list)  # (folder name, robustness.json)
    parameters: int | None = None
    description: str = ""  # the model family's line in the registry
    unread: list[str] = field(default_factory=list)  # the folder's files that could not be read, each with why

    @property
    def folder(self) -> str:
        return os.path.dirname(self.weights)

    @property
    def config(self) -> dict:
        return self.ckpt.get("config") or {}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_card_path(weights: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(weights)), CARD_NAME)


def check_card_out(out: str | None, weights: str) -> str:
    """The card's path: `out`, or MODEL_CARD.md beside the weights; refused in one line before any work."""
    path = os.path.abspath(out) if out else default_card_path(weights)
    if os.path.isdir(path):
        raise UsageError(f"--out '{out}' is a folder: give a file name such as {os.path.join(path, CARD_NAME)}")
    if not os.path.isdir(os.path.dirname(path)):
        raise UsageError(f"--out '{out}': the folder {os.path.dirname(path)} does not exist; make it first")
    if path == os.path.abspath(weights):
        raise UsageError(f"--out '{out}' is the checkpoint itself: choose another file name")
    return path


def gather(weights: str) -> CardFacts:
    """The facts of the checkpoint at `weights` and of its folder (a CheckpointError, exit 2, for a file that is
    not an imgclf checkpoint: an export is refused, the card is its checkpoint's)."""
    weights = os.path.abspath(weights)
    ckpt = load_checkpoint(weights)
    f = CardFacts(weights, file_sha256(weights), {k: v for k, v in ckpt.items() if k != "state_dict"})
    f.parameters, f.description = _model_facts(ckpt)
    f.results = _read(f, "results.json", json.load) or {}
    f.rows = _read(f, "metrics.csv", lambda fh: list(csv.DictReader(fh))) or []
    f.evals = _measured(f, "eval.json")
    f.robustness = _measured(f, "robustness.json")
    return f


def _model_facts(ckpt: dict) -> tuple[int | None, str]:
    """(parameters of the network, the family's description), each None or "" where it cannot be told (a family
    whose package is not installed)."""
    name = ckpt["model"]["name"]
    try:
        description = get_spec(name).description
        model = model_from_checkpoint(ckpt, channels_last=False)
        return sum(p.numel() for p in model.parameters()), description
    except Exception as e:  # the card still has everything else
        log.warning("model card: %s's parameters not counted (%s: %s)", name, type(e).__name__, e)
        return None, ""


def _read(f: CardFacts, name: str, load):
    path = os.path.join(f.folder, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8", newline="" if name.endswith(".csv") else None) as fh:
            return load(fh)
    except (OSError, ValueError) as e:
        f.unread.append(f"{name} ({type(e).__name__})")
        return None


def _measured(f: CardFacts, name: str) -> list[tuple[str, dict]]:
    """The `name` files one folder down that measured this checkpoint or an export of it beside it (the same
    stem: best.pt, best.onnx), by folder name."""
    stem = os.path.splitext(os.path.basename(f.weights))[0]
    found = []
    for sub in sorted(os.listdir(f.folder)):
        path = os.path.join(f.folder, sub, name)
        if not os.path.isfile(path):
            continue
        data = _read(f, os.path.join(sub, name), json.load)
        if not isinstance(data, dict):
            continue
        measured = str(data.get("weights") or "")
        if os.path.splitext(os.path.basename(measured))[0] == stem:
            found.append((sub, data))
    return found


def build_card(weights: str) -> str:
    """The card of the checkpoint at `weights`, as Markdown text."""
    return render(gather(weights))


def write_card(weights: str, out: str | None = None) -> str:
    """Write the card of `weights` to `out` (default MODEL_CARD.md beside it), whole or not at all; its path."""
    path = check_card_out(out, weights)
    text = build_card(weights)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return path
