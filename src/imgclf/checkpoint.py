"""One self-describing artifact per trained model.

A checkpoint holds the weights and everything needed to use them: model name and arguments, class names in
index order, preprocessing, the training config, metrics and a fingerprint of the data it saw; `last.pt` and
`epoch_N.pt` add the optimizer, scheduler and progress needed to resume. Only plain types and tensors, so it
loads with `torch.load(..., weights_only=True)`: a checkpoint from a stranger cannot run code.
"""
from __future__ import annotations

import os
import pickle

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_open

FORMAT = "imgclf-checkpoint"
VERSION = 1


def make_checkpoint(model: nn.Module, *, model_name: str, classes: list[str], preprocess: dict, config: dict,
                    metrics: dict | None = None, data_fingerprint: str | None = None, epoch: int | None = None,
                    train_state: dict | None = None) -> dict:
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
    return ckpt


def save_checkpoint(ckpt: dict, path: str) -> None:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over `path`. A full disk
    is a DiskFullError that says how much the file needed; `path` is left as it was."""
    with atomic_open(path, "wb", need=_tensor_bytes(ckpt)) as f:
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


def load_checkpoint(path: str) -> dict:
    """Load and validate an imgclf checkpoint; refuse anything that is not plain data."""
    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError(f"weights file '{path}' not found: pass a checkpoint such as runs/NAME/best.pt")
    if os.path.isdir(path):
        hint = os.path.join(path, "best.pt")
        raise CheckpointError(f"'{path}' is a folder: pass a checkpoint file such as {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
        detail = (lines[0] if lines else str(e).splitlines()[0])[:200]
        raise CheckpointError(
            f"refused to load '{path}': it holds Python objects beyond tensors and plain data, which could run code "
            f"when unpickled ({detail}); use a checkpoint written by imgclf"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint ({str(e).splitlines()[0][:160]})") from None
    return validate_checkpoint(ckpt, path)


def validate_checkpoint(ckpt, path: str) -> dict:
    """`ckpt` (already loaded with weights_only=True) if it is a complete imgclf checkpoint, else CheckpointError."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not an imgclf checkpoint (no '{FORMAT}' marker): pass best.pt or last.pt from an imgclf run"
        )
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"'{path}' was written by a newer imgclf (format {ckpt['version']}): upgrade imgclf")
    for key in ("model", "classes", "preprocess", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"'{path}' is an incomplete imgclf checkpoint (missing '{key}')")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", *, channels_last: bool = True) -> nn.Module:
    from .models.registry import build_model

    m = ckpt["model"]
    model = build_model(m["name"], m["num_classes"], pretrained=False)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit model {m['name']}: {str(e).splitlines()[0]}") from None
    from .device import to_layout

    return to_layout(model.to(device), channels_last).eval()
