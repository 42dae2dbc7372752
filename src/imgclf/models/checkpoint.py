"""One self-describing artifact per trained model.

A checkpoint holds the weights and everything needed to use them: model name and arguments, class names in
index order, preprocessing, the training config, metrics and a fingerprint of the data it saw; `last.pt` and
`epoch_N.pt` add the optimizer, scheduler and progress needed to resume. `imgclf calibrate` adds a `temperature`
(a float; absent means 1.0) and its `calibration` record. Only plain types and tensors, so it
loads with `torch.load(..., weights_only=True)`: a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from collections import Counter

import torch
from torch import nn

from imgclf.compute.device import to_layout
from imgclf.core import ood
from imgclf.core.errors import CheckpointError, did_you_mean
from imgclf.core.fileio import atomic_open, stops_deferred
from imgclf.core.multilabel import MULTILABEL, SINGLE, task_fields
from imgclf.models.registry import REGISTRY, build_model, get_spec, refused_content
from imgclf.models.tta import as_temperature, is_temperature, is_temperature_list

log = logging.getLogger(__name__)

FORMAT = "imgclf-checkpoint"
VERSION = 1


def make_checkpoint(
    model: nn.Module,
    *,
    model_name: str,
    classes: list[str],
    preprocess: dict,
    config: dict,
    metrics: dict | None = None,
    data_fingerprint: str | None = None,
    epoch: int | None = None,
    train_state: dict | None = None,
    task: str = SINGLE,
    thresholds: list[float] | None = None,
    ood: dict | None = None,
) -> dict:
    """The checkpoint of `model`. `task` (core/multilabel.py): single or multilabel; a multi-label model's
    `thresholds` (one per class, fitted on validation) turn its sigmoid scores into label sets."""
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name, "num_classes": len(classes)},
        "classes": list(classes),
        "preprocess": dict(preprocess),
        "config": dict(config),
        "metrics": dict(metrics or {}),
        "data_fingerprint": data_fingerprint,
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "torch_version": str(torch.__version__),
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    if task != SINGLE:  # a single-label checkpoint is written as before: older readers read it
        ckpt["task"] = task
        ckpt["thresholds"] = [float(t) for t in thresholds] if thresholds is not None else None
    if ood is not None:  # {"record": core/ood.py's record, "bank": N x D float16 normalised features or None}
        ckpt["ood"] = ood
    return ckpt


def ood_of(ckpt: dict) -> tuple[dict | None, torch.Tensor | None]:
    """(record, bank) of a validated checkpoint's out-of-distribution entry (core/ood.py); (None, None) for a
    checkpoint without one. The bank is N x D normalised training features (float16), None without kNN."""
    entry = ckpt.get("ood")
    if entry is None:
        return None, None
    return entry["record"], entry.get("bank")


def task_of(ckpt: dict) -> tuple[str, list[float] | None]:
    """(task, thresholds) of a validated checkpoint: ("single", None), or ("multilabel", one per class)."""
    return task_fields(ckpt, len(ckpt["classes"]))


def save_checkpoint(ckpt: dict, path: str) -> None:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over `path`. A full disk
    is a DiskFullError that says how much the file needed; `path` is left as it was. A Ctrl-C or SIGTERM during
    the write takes effect once the file is whole (core/fileio.stops_deferred)."""
    with stops_deferred(), atomic_open(path, "wb", need=_tensor_bytes(ckpt)) as f:
        torch.save(ckpt, f)


def _tensor_bytes(obj) -> int:
    """The bytes of every tensor in `obj` (nested dicts, lists): about the size torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


# What to do about a file that is not a usable checkpoint (the end of most messages below).
_USE_ANOTHER = "use another checkpoint of the run (best.pt, last.pt or an epoch_N.pt), or train again"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive
_PICKLE_MAGIC = b"\x80"  # the older torch.save format (and any pickle) starts with the PROTO opcode


def temperature_of(ckpt: dict) -> float | list[float]:
    """The temperature `imgclf calibrate` stored (softmax(logits / T) are the calibrated probabilities); 1.0
    for a checkpoint that was never calibrated. A multi-label model's is a list, one per label (sigmoid(z_k / T_k))."""
    return as_temperature(ckpt.get("temperature"))


def load_checkpoint(path: str) -> dict:
    """Load and validate an imgclf checkpoint; refuse anything that is not plain data. Every way a file can
    be wrong is one CheckpointError line that names the file and says what to do."""
    path = str(path)
    _check_file(path)
    return validate_checkpoint(_load_plain_data(path), path)


def _check_file(path: str) -> None:
    """What can be told from the file itself before torch reads it: missing, a folder, empty, unreadable, cut
    short, or not torch.save's format at all."""
    if not os.path.exists(path):
        raise CheckpointError(f"weights file '{path}' not found: pass a checkpoint such as runs/NAME/best.pt")
    if os.path.isdir(path):
        hint = os.path.join(path, "best.pt")
        raise CheckpointError(f"'{path}' is a folder: pass a checkpoint file such as {hint}")
    if not os.path.isfile(path):  # a FIFO would block the read below forever; a device never ends
        raise CheckpointError(f"'{path}' is not a regular file: pass a checkpoint file such as runs/NAME/best.pt")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(
            f"cannot read '{path}' ({e.strerror}): make it readable for this user, or copy it somewhere that is"
        ) from None
    if size == 0:
        raise CheckpointError(
            f"'{path}' is empty (0 bytes), as a write or copy that was cut short leaves it: {_USE_ANOTHER}"
        )
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):  # the zip archive's directory, at its end, is missing
            raise CheckpointError(
                f"'{path}' is truncated: its zip archive ends after {size} bytes without its directory, "
                f"as a write or copy that was cut short leaves it; copy it again, or {_USE_ANOTHER}"
            )
    elif not head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"'{path}' is not a PyTorch checkpoint (not a zip archive, nor torch's older pickle format): "
            f"pass best.pt or last.pt from an imgclf run"
        )


def _load_plain_data(path: str):
    """torch.load with weights_only=True, its failures told apart: Python objects beyond plain data are
    refused (naming them), anything unreadable is called unreadable. torch's own advice to load with
    weights_only=False is never passed on: that runs whatever code the file holds."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # recorded here, shown with --verbose, never on the console
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(str(e), path) from None
    except EOFError:
        raise CheckpointError(
            f"'{path}' is truncated (its data ends early): copy it again, or {_USE_ANOTHER}"
        ) from None
    except OSError as e:
        raise CheckpointError(
            f"cannot read '{path}' ({e.strerror or _sentence(str(e))}): check the file and its disk"
        ) from None
    except Exception as e:
        reason = _sentence(str(e)) or type(e).__name__
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint ({reason}): {_USE_ANOTHER}") from e
    for w in caught:
        log.debug("loading %s: %s", path, w.message)
    return ckpt


def _refusal(message: str, path: str) -> CheckpointError:
    """The one line for torch's weights-only refusal `message`: code or Python objects refused for safety
    (named), or bytes that are no pickle torch.save writes (damaged)."""
    held = refused_content(message)
    if held:
        return CheckpointError(
            f"refused to load '{path}' for safety: it holds {held}; use a checkpoint written by imgclf"
        )
    detail = _unpickler_detail(message)
    if detail.startswith("Unsupported operand") or not detail:  # bytes that are no pickle torch.save writes
        return CheckpointError(
            f"'{path}' is not a readable PyTorch checkpoint (its data is damaged, or was not written "
            f"by torch.save with its default settings): {_USE_ANOTHER}"
        )
    return CheckpointError(
        f"refused to load '{path}' for safety: it holds Python objects or code ({_sentence(detail)}) beyond tensors "
        "and plain data, and loading those could run code; use a checkpoint written by imgclf"
    )


def _unpickler_detail(message: str) -> str:
    """The reason in torch's weights-only refusal ("WeightsUnpickler error: ..."), without its advice."""
    _, _, rest = message.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in rest.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _sentence(message: str, limit: int = 160) -> str:
    """The first sentence of a library's message, whole: cut at its first full stop, or at a word with an
    ellipsis when even that is longer than `limit` characters."""
    first = next((ln.strip() for ln in message.splitlines() if ln.strip()), "")
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)  # c10's source location says nothing to a user
    m = re.match(r"(.+?\.)(\s|$)", first)
    first = m.group(1) if m else first
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return first


def validate_checkpoint(ckpt, path: str) -> dict:
    """`ckpt` (already loaded with weights_only=True) if it is a complete, consistent imgclf checkpoint, else
    CheckpointError: its marker and version, its entries and their types, class names against the model's
    number of classes and its head, and the weights against the model it names (keys and shapes)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not an imgclf checkpoint (no '{FORMAT}' marker): pass best.pt or last.pt from an imgclf run"
        )
    version = ckpt.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"'{path}' has a damaged format version ({version!r:.40}): {_USE_ANOTHER}")
    if version > VERSION:
        raise CheckpointError(f"'{path}' was written by a newer imgclf (format {version}): upgrade imgclf")
    missing = [k for k in ("model", "classes", "preprocess", "state_dict") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"'{path}' is an incomplete imgclf checkpoint (missing {', '.join(map(repr, missing))}): {_USE_ANOTHER}"
        )
    _check_entries(ckpt, path)
    _check_classes(ckpt, path)
    task_fields(ckpt, len(ckpt["classes"]), where=f"'{path}'")
    _check_weights(ckpt, path)
    return ckpt


def _multilabel(ckpt: dict) -> bool:
    return ckpt.get("task") == MULTILABEL


def _check_entries(ckpt: dict, path: str) -> None:
    m, classes, state = ckpt["model"], ckpt["classes"], ckpt["state_dict"]
    bad = []
    if not (isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("num_classes"), int)):
        bad.append("'model' (a name and a number of classes)")
    if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        bad.append("'classes' (a list of names)")
    if not isinstance(ckpt["preprocess"], dict):
        bad.append("'preprocess' (a dict)")
    t = ckpt.get("temperature")
    if t is not None and not (is_temperature(t) or (_multilabel(ckpt) and is_temperature_list(t, len(classes)))):
        what = "a number above 0, or one per label" if _multilabel(ckpt) else "a number above 0"
        bad.append(f"'temperature' ({what}; run imgclf calibrate again)")
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        bad.append("'state_dict' (tensors by name)")
    if not _ood_entry_ok(ckpt.get("ood")):
        bad.append("'ood' (out-of-distribution thresholds and feature bank; run imgclf calibrate again)")
    if bad:
        raise CheckpointError(f"'{path}' has damaged entries, {'; '.join(bad)}: {_USE_ANOTHER}")
    dup = sorted(c for c, k in Counter(classes).items() if k > 1)
    if dup:
        raise CheckpointError(
            f"'{path}' names a class twice ({', '.join(dup[:5])}), so its labels are ambiguous: {_USE_ANOTHER}"
        )


def _ood_entry_ok(entry) -> bool:
    if entry is None:
        return True
    if not isinstance(entry, dict):
        return False
    try:
        ood.check_record(entry.get("record"), "the checkpoint")
    except CheckpointError:
        return False
    bank = entry.get("bank")
    return entry.get("record") is not None and (
        bank is None or (isinstance(bank, torch.Tensor) and bank.dim() == 2 and bank.shape[0] > 0)
    )


def _check_classes(ckpt: dict, path: str) -> None:
    """len(classes) == the model entry's num_classes == the rows of the head's weight."""
    name, n = ckpt["model"]["name"], ckpt["model"]["num_classes"]
    if name not in REGISTRY:
        raise CheckpointError(
            f"'{path}' holds a model named '{name}', which this imgclf does not have"
            f"{did_you_mean(name, REGISTRY)}: upgrade imgclf (`imgclf models` lists the models it has)"
        )
    head = REGISTRY[name].head
    w = ckpt["state_dict"].get(head + ".weight")
    rows = int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() else None
    n_names = len(ckpt["classes"])
    if n_names != n or (rows is not None and rows != n):
        outputs = f" and its head ({head}) has {rows} outputs" if rows is not None else ""
        raise CheckpointError(
            f"'{path}' is inconsistent: it lists {n_names} class name{'' if n_names == 1 else 's'}, but its model entry says {n} classes"
            f"{outputs}; the file was edited or damaged: {_USE_ANOTHER}"
        )


def _check_weights(ckpt: dict, path: str) -> None:
    name, n = ckpt["model"]["name"], ckpt["model"]["num_classes"]
    problem = weights_mismatch(ckpt["state_dict"], name, n)
    if problem:
        raise CheckpointError(f"'{path}' {problem}: {_USE_ANOTHER}")


def _shapes(name: str, num_classes: int) -> dict[str, tuple]:
    """Name -> shape of model `name`'s state dict, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        model = get_spec(name).builder(num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def weights_mismatch(state: dict, name: str, num_classes: int, want: dict[str, tuple] | None = None) -> str | None:
    """None when `state` fits model `name` with `num_classes` outputs (what load_state_dict(strict=True)
    needs: the same keys, each of the same shape; `want`: that model's shapes, when it is built already);
    otherwise what is wrong, as the middle of a sentence that starts with the file's name: which model the
    weights look like, how many keys are missing, unexpected or of another shape, with a first example of each."""
    want = _shapes(name, num_classes) if want is None else want
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    other = [k for k in want if k in have and have[k] != want[k]]
    if not (missing or unexpected or other):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, such as '{missing[0]}'")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, such as '{unexpected[0]}'")
    if other:
        k = other[0]
        parts.append(f"{len(other)} of another shape, such as '{k}' {list(have[k])} where {name} needs {list(want[k])}")
    like = _closest_model(have, num_classes, exclude=name)
    whose = (
        f"look like {like}'s, not those of the {name} it names" if like else f"do not fit {name}, the model it names"
    )
    return f"holds weights that {whose} ({len(want)} tensors expected: {'; '.join(parts)})"


def _closest_model(have: dict[str, tuple], num_classes: int, *, exclude: str) -> str | None:
    """The registered model whose state dict has most of these names and shapes (at least 90% of both),
    or None."""
    best, best_score = None, 0.9
    for name in REGISTRY:
        if name == exclude:
            continue
        try:
            want = _shapes(name, num_classes)
        except Exception:
            continue
        same = sum(1 for k, s in want.items() if have.get(k) == s)
        score = same / max(len(want), len(have))
        if score >= best_score:
            best, best_score = name, score
    return best


def load_weights(model: nn.Module, ckpt: dict, path: str | None = None) -> None:
    """model.load_state_dict(ckpt["state_dict"]) with its failure as one CheckpointError line (what
    weights_mismatch finds) instead of torch's multi-line report."""
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        name = ckpt["model"]["name"]
        problem = weights_mismatch(ckpt["state_dict"], name, len(ckpt["classes"]), want)
        reason = problem or f"holds weights that do not load into {name} ({_sentence(str(e))})"
        raise CheckpointError(f"{_name(path)} {reason}: {_USE_ANOTHER}") from None


def _name(path: str | None) -> str:
    return f"'{path}'" if path else "the checkpoint"


def model_from_checkpoint(
    ckpt: dict, device: torch.device | str = "cpu", *, channels_last: bool = True, path: str | None = None
) -> nn.Module:
    m = ckpt["model"]
    model = build_model(m["name"], m["num_classes"], pretrained=False)
    load_weights(model, ckpt, path)
    return to_layout(model.to(device), channels_last).eval()
