"""One way to run any model imgclf can load: a checkpoint today, exported files as `export` adds formats.

`open_model(path)` returns a Runner. Every runner knows its class names and preprocessing, so callers
(Predictor, evaluate, bench, serve) never need the original checkpoint next to an exported file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .data.pipeline import Preprocess


@dataclass
class Runner:
    """A loaded model. `logits(x)` takes a normalised float32 N x 3 x S x S batch and returns N x C float32 on cpu."""

    path: str
    format: str  # "checkpoint", or an export format name
    model_name: str
    classes: list[str]
    preprocess: Preprocess
    config: dict = field(default_factory=dict)  # the training config (data, data_root, val_fraction, seed, ...)
    extra: dict = field(default_factory=dict)  # anything format-specific worth showing (opset, precision, ...)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def metadata(self) -> dict:
        return {"path": os.path.abspath(self.path), "format": self.format, "model": self.model_name,
                "classes": list(self.classes), "num_classes": len(self.classes),
                "preprocess": self.preprocess.to_dict(), **self.extra}


class CheckpointRunner(Runner):
    """Eager PyTorch from an imgclf checkpoint (loaded with weights_only=True)."""

    def __init__(self, path: str, *, device: str = "auto", precision: str = "auto"):
        from .checkpoint import load_checkpoint, model_from_checkpoint
        from .device import resolve_device, resolve_precision

        ckpt = load_checkpoint(path)
        super().__init__(path=str(path), format="checkpoint", model_name=ckpt["model"]["name"],
                         classes=list(ckpt["classes"]), preprocess=Preprocess.from_dict(ckpt["preprocess"]),
                         config=dict(ckpt.get("config", {})))
        self.ckpt = ckpt
        self.device = resolve_device(device)
        self.amp = resolve_precision(precision, self.device)
        self.model = model_from_checkpoint(ckpt, self.device)
        self.extra = {"device": str(self.device), "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32"}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        from .device import autocast, to_layout

        with autocast(self.device, self.amp):
            return self.model(to_layout(x.to(self.device), True)).float().cpu()


def open_model(path: str, *, device: str = "auto", precision: str = "auto") -> Runner:
    """A Runner for `path`: an imgclf checkpoint (.pt), or an exported file once `export` registers its format."""
    return CheckpointRunner(str(path), device=device, precision=precision)
