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


# ------------------------------------------------------------------------------------------------ exports


@dataclass(frozen=True)
class ExportCard:
    """The card an export points to: `source` (MODEL_CARD.md beside the checkpoint), `dest` (where the export
    finds it: the same file when the export is in the checkpoint's folder, else a copy beside the export), the
    card's sha256, and whether it describes these weights (it names their sha256)."""

    source: str
    dest: str
    sha256: str
    current: bool

    def pointer(self, out: str) -> dict:
        """The export metadata's "model_card" entry: the card's path relative to the export's folder, its sha256."""
        rel = os.path.relpath(self.dest, os.path.dirname(os.path.abspath(out)))
        return {"file": rel.replace(os.sep, "/"), "sha256": self.sha256, "describes_checkpoint": self.current}


def export_card(weights: str, out: str) -> ExportCard | None:
    """The card for an export of `weights` written to `out`, or None where the checkpoint has none beside it. In
    another folder the card goes beside the export as MODEL_CARD.md, unless a card of other weights is there
    already: then as OUT_NAME.MODEL_CARD.md (model.onnx.MODEL_CARD.md)."""
    source = default_card_path(weights)
    if not os.path.isfile(source):
        log.info("no %s beside %s: the export points to no model card (`imgclf card` writes one)", CARD_NAME, weights)
        return None
    with open(source, "rb") as fh:
        data = fh.read()
    weights_sha = file_sha256(weights)
    current = weights_sha.encode() in data
    if not current:
        log.warning(
            "%s describes other weights than %s (written before `imgclf calibrate`?): `imgclf card %s` rebuilds it",
            source,
            weights,
            weights,
        )
    folder = os.path.dirname(os.path.abspath(out))
    dest = os.path.join(folder, CARD_NAME)
    if os.path.abspath(folder) != os.path.dirname(source) and _other_card(dest, weights_sha):
        dest = os.path.join(folder, os.path.basename(out) + "." + CARD_NAME)
    return ExportCard(source, dest, hashlib.sha256(data).hexdigest(), current)


def _other_card(path: str, weights_sha: str) -> bool:
    """Whether `path` is a card of other weights (one that does not name `weights_sha`)."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as fh:
        return weights_sha.encode() not in fh.read()


def copy_card(card: ExportCard) -> None:
    """The card copied to its place beside the export (nothing to do in the checkpoint's own folder)."""
    if os.path.abspath(card.dest) == card.source:
        return
    with open(card.source, "rb") as src, atomic_open(card.dest, "wb") as dst:
        dst.write(src.read())
