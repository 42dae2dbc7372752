"""An ONNX export served with onnxruntime, Pillow and NumPy only: the slim install's model, never importing torch.

It reads what `imgclf export --format onnx|onnx-int8` records in the file (class names, preprocessing, the
model's name, where it came from) and prepares images exactly as `imgclf predict` does on the same file:
`decode.decode_upload` (the same PIL decode, resize and crop) and `decode.normalize_batch` (torchvision's
scale-then-normalise arithmetic in float32), then the same onnxruntime session options (`onnxrt`).
A temperature fitted by calibration is baked into the exported graph, so nothing here needs to know about it.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

from imgclf.core.errors import CheckpointError
from imgclf.core.formats import FORMATS
from imgclf.core.onnxrt import open_session
from imgclf.data.images import INTERPOLATIONS
from imgclf.serve.decode import normalize_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prep:
    """The fields of `data.pipeline.Preprocess` (which lives beside torch), read from an export's metadata."""

    img_size: int  # square crop fed to the model, pixels
    resize: int  # shorter side after loading, pixels
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str) -> Prep:
        """As `Preprocess.from_dict`: files from before `interpolation` was saved mean bilinear."""
        try:
            p = cls(
                img_size=int(d["img_size"]),
                resize=int(d["resize"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                interpolation=d.get("interpolation", "bilinear"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"'{path}' has incomplete imgclf metadata (preprocessing: {e}): export it again with imgclf export"
            ) from None
        if p.interpolation not in INTERPOLATIONS:
            raise CheckpointError(
                f"preprocessing in this file: interpolation '{p.interpolation}' is not one of "
                f"{', '.join(INTERPOLATIONS)} (written by a newer imgclf?)"
            )
        if len(p.mean) != 3 or len(p.std) != 3 or not all(p.std) or p.img_size < 1 or p.resize < 1:
            raise CheckpointError(f"'{path}' has invalid preprocessing {p.to_dict()}: export it again")
        return p


def default_threads() -> int:
    """Intra-op threads when none are given: PyTorch's count when this process already runs PyTorch (what
    `imgclf serve --threads` sets and `runtime.onnx_session_options` uses), else $OMP_NUM_THREADS, else 0
    (onnxruntime's default, one per physical core: the same number PyTorch would pick)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


class OnnxModel:
    """A served ONNX export: `probabilities(images)` takes decoded uint8 S x S x 3 arrays and returns float32
    N x C probabilities. `path`, `format`, `model_name`, `classes`, `preprocess` and `metadata()` are those of
    `runtime.Runner`, so the app, its /metadata and the CLI's start-up line treat both kinds alike."""

    def __init__(self, path: str, *, device: str = "auto", threads: int | None = None, spin: bool = False):
        threads = int(threads if threads is not None else default_threads())
        # "auto" takes CUDA where onnxruntime-gpu is installed (and, with PyTorch loaded, where it sees a GPU)
        torch = sys.modules.get("torch")
        cuda = torch.cuda.is_available() if torch is not None else True
        self.session, meta = open_session(path, device=device, threads=threads, spin=spin, cuda_by_default=cuda)
        self.path = str(path)
        self.format = meta.get("format", "onnx")
        try:
            self.model_name = str(meta["model"])
            self.classes = [str(c) for c in meta["classes"]]
            self.preprocess = Prep.from_dict(meta["preprocess"], self.path)
        except (KeyError, TypeError) as e:
            raise CheckpointError(
                f"'{path}' has incomplete imgclf metadata (missing {e}): export it again with imgclf export"
            ) from None
        self.config = dict(meta.get("config") or {})
        self.input_name = self.session.get_inputs()[0].name
        providers = self.session.get_providers()
        self.extra = {
            **{k: meta[k] for k in ("source", "export", "verification") if k in meta},
            "device": "cuda" if providers[0].startswith("CUDA") else "cpu",
            "precision": "int8" if getattr(FORMATS.get(self.format), "int8", False) else "fp32",
            "providers": providers,
            "threads": threads or "auto",  # auto: onnxruntime's, one per physical core
        }

    def metadata(self) -> dict:
        return {
            "path": os.path.abspath(self.path),
            "format": self.format,
            "model": self.model_name,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "preprocess": self.preprocess.to_dict(),
            **self.extra,
        }

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        x = normalize_batch(images, self.preprocess.mean, self.preprocess.std)
        logits = np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)
        return softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float32 N x C logits, shifted by the row maximum so that exp never overflows."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
