"""A model file without torch: the checks before it is read, how an ONNX export is known, and what an opened
model says about itself.

`runtime.open_model` (the full install) and the server's `model.open_served` (the slim one too) check a path
with `check_model_file` before reading a byte, so both refuse a missing file, a folder or a FIFO in the same
words; every opened model, a `runtime.Runner` or the slim server's `OnnxModel`, describes itself with
`metadata` (/metadata, the CLI's start-up line).
"""

from __future__ import annotations

import os

from imgclf.core.errors import CheckpointError

# What an exported file's metadata records that a reader shows as it is: where the export came from, how it was
# made, how well it matched the checkpoint and its model card (see exporting/export.py's make_metadata)
EXPORT_EXTRA = ("source", "export", "verification", "model_card")  # model_card: evaluation/card.py


def is_onnx_path(path: str) -> bool:
    """ONNX files have no magic bytes: known by name, before anything else (`runtime.open_model`, the slim path)."""
    return str(path).lower().endswith(".onnx")


def check_model_file(path: str) -> None:
    """Refuse, before any read, a path that is not a regular file. Raises CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(
            f"weights file '{path}' not found: pass a checkpoint such as runs/NAME/best.pt or an exported model"
        )
    if os.path.isdir(path):
        raise CheckpointError(f"'{path}' is a folder: pass a checkpoint file such as {os.path.join(path, 'best.pt')}")
    if not os.path.isfile(path):  # a FIFO or a device would block the reads
        raise CheckpointError(f"'{path}' is not a regular file: pass a checkpoint file such as runs/NAME/best.pt")


def export_extra(meta: dict, **more) -> dict:
    """The entries of an export's metadata shown as they are (EXPORT_EXTRA), then `more` (device, precision, ...)."""
    return {**{k: meta[k] for k in EXPORT_EXTRA if k in meta}, **more}


def metadata(model, **more) -> dict:
    """What an opened model says about itself: its file (absolute), format, model name, classes and
    preprocessing, then `more` (a Runner's temperature and test-time augmentation), then its `extra` (device,
    precision, where an export came from, ...). `model` has path, format, model_name, classes, preprocess
    (a core.artifact.Preprocess) and extra."""
    return {
        "path": os.path.abspath(model.path),
        "format": model.format,
        "model": model.model_name,
        "classes": list(model.classes),
        "num_classes": len(model.classes),
        "preprocess": model.preprocess.to_dict(),
        **more,
        **model.extra,
    }
