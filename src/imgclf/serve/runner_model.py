"""Any `runtime.Runner` served through PyTorch: checkpoints and every export format (the full install).

Checkpoint-only features of the service (an explanation overlay needs the eager model and its gradients)
belong here, next to the model they need, never in the torch-free app or the ONNX path.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .decode import NormalizeUploads

log = logging.getLogger(__name__)


class RunnerModel:
    """`probabilities(images)`: decoded uint8 S x S x 3 arrays -> float32 N x C probabilities (NumPy), through
    the runner's `logits` on the normalised batch (`NormalizeUploads`: bit-for-bit `Predictor`'s input)."""

    def __init__(self, runner):
        self.runner = runner
        self.normalize = NormalizeUploads(runner.preprocess)

    def __getattr__(self, name):  # path, format, model_name, classes, preprocess, metadata, session, ...
        if name == "runner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.runner, name)

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        x = self.normalize(images)
        probs = self.runner.logits(x).float().softmax(1)
        del x
        return probs.cpu().numpy()
