"""An ONNX export served with onnxruntime, Pillow, simplejpeg and NumPy: the slim install's model, without torch.

It reads what `imgclf export --format onnx|onnx-int8` records in the file (class names, preprocessing, the
model's name, where it came from) and prepares images exactly as `imgclf predict` does on the same file:
`decode.decode_upload` (the same decode, resize and crop) and `decode.normalize_batch` (torchvision's
scale-then-normalise arithmetic in float32), in a session opened as `runtime.OnnxRunner` opens it
(`onnxrt.open_export`: the same options, providers and threads), with the same `Preprocess` and `metadata`.
A temperature fitted by calibration is baked into the exported graph, so nothing here needs to know about it.
A multi-label export (metadata "task": "multilabel", "thresholds") answers a sigmoid per label, and the app
turns the scores into the label set with the thresholds read here (`core.multilabel.task_fields`).
"Unknown" (`--reject ood`): the out-of-distribution record in the metadata ("ood", core/ood.py) gives each
score's threshold; `scored` runs the graph once and reads its outputs by name ("logits", and "knn" where the
export computes the kNN distance), and `core.ood.scores` makes msp and energy from the logits in NumPy, as
`imgclf predict` does on the same file. Without a "knn" output the record's knn threshold is not used.
"""

from __future__ import annotations

import logging

import numpy as np

from imgclf.core import modelfile
from imgclf.core import ood as oodscores
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import CheckpointError
from imgclf.core.modelfile import export_extra
from imgclf.core.multilabel import MULTILABEL, SINGLE, task_fields
from imgclf.core.onnxrt import open_export
from imgclf.serve.decode import normalize_batch

log = logging.getLogger(__name__)


class OnnxModel:
    """A served ONNX export: `probabilities(images)` takes decoded uint8 S x S x 3 arrays and returns float32
    N x C probabilities. `path`, `format`, `model_name`, `classes`, `preprocess` and `metadata()` are those of
    `runtime.Runner`, so the app, its /metadata and the CLI's start-up line treat both kinds alike.

    `threads` None: `onnxrt.default_threads()`; 0: onnxruntime's own count."""

    def __init__(self, path: str, *, device: str = "auto", threads: int | None = None, spin: bool = False):
        # "auto" takes CUDA where onnxruntime-gpu is installed (and, with PyTorch loaded, where it sees a GPU)
        self.session, meta, runs_on = open_export(path, device=device, threads=threads, spin=spin)
        self.path = str(path)
        self.format = meta.get("format", "onnx")
        try:
            self.model_name = str(meta["model"])
            self.classes = [str(c) for c in meta["classes"]]
            self.preprocess = Preprocess.from_dict(meta["preprocess"], self.path)
        except (KeyError, TypeError) as e:
            raise CheckpointError(
                f"'{path}' has incomplete imgclf metadata (missing {e}): export it again with imgclf export"
            ) from None
        # single, or multilabel with one threshold per label (checked: a damaged list is one CheckpointError line)
        self.task, self.thresholds = task_fields(meta, len(self.classes), where=f"'{path}'")
        self.config = dict(meta.get("config") or {})
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # the out-of-distribution record (a damaged one is one CheckpointError line), as this graph can use it
        self.ood = oodscores.usable(oodscores.check_record(meta.get("ood"), f"'{path}'"), "knn" in self.output_names)
        self.extra = export_extra(meta, **runs_on)

    def metadata(self) -> dict:
        more = {"task": self.task, "thresholds": self.thresholds} if self.task != SINGLE else {}
        if self.ood is not None:
            more["ood"] = self.ood
        return modelfile.metadata(self, **more)

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        return self._probabilities(self._run(images)[0])

    def scored(self, images: list[np.ndarray]) -> tuple[np.ndarray, dict]:
        """(probabilities, {score name: N values}) of one run of the graph: every out-of-distribution score the
        file gives (core/ood.scores: msp and energy from the logits, knn from the "knn" output where it has one)."""
        got = dict(zip(self.output_names, self._run(images)))
        logits = got.get("logits", got[self.output_names[0]])
        return self._probabilities(logits), oodscores.scores({"logits": logits, "knn": got.get("knn")}, self.task)

    def _run(self, images: list[np.ndarray]) -> list[np.ndarray]:
        x = normalize_batch(images, self.preprocess.mean, self.preprocess.std)
        return self.session.run(None, {self.input_name: x})

    def _probabilities(self, logits) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float32)
        return sigmoid(logits) if self.task == MULTILABEL else softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float32 N x C logits, shifted by the row maximum so that exp never overflows."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic of float32 logits (a multi-label model's per-label probabilities), as torch.sigmoid:
    written with exp of -|x| only, so that no logit overflows."""
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
