"""Any `runtime.Runner` served through PyTorch: checkpoints and every export format (the full install).

The torch side of the service: the batch normalisation PyTorch models get (`NormalizeUploads`), and the
checkpoint-only features (an explanation overlay needs the eager model and its gradients), next to the model
they need, never in the torch-free app or the ONNX path. `model.py` imports this module only when it serves
a PyTorch model.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from imgclf.compute.device import to_layout
from imgclf.core.multilabel import MULTILABEL, SINGLE
from imgclf.core.ood import usable
from imgclf.data.pipeline import eval_transform
from imgclf.evaluation.explain import Explainer, NoFeatureMap

log = logging.getLogger(__name__)


class NormalizeUploads:
    """N decoded images (uint8 S x S x 3 each) -> normalised float32 N x 3 x S x S torch tensor, the model's input
    (in channels_last memory order: what a channels_last model wants, and any runner accepts a strided tensor).
    `eval_transform` works on batches and its steps are elementwise or a crop, so a batch gets bit-for-bit the
    values `Predictor` computes image by image."""

    def __init__(self, preprocess):
        self.transform = eval_transform(preprocess)

    def __call__(self, images: list):
        return self.transform(torch.stack([torch.as_tensor(x) for x in images]).permute(0, 3, 1, 2))


class RunnerModel:
    """`probabilities(images)`: decoded uint8 S x S x 3 arrays -> float32 N x C probabilities (NumPy), through
    the runner's `logits` on the normalised batch (`NormalizeUploads`: bit-for-bit `Predictor`'s input);
    `scored(images)`: the same and the out-of-distribution scores (`Runner.ood_scores`), for a model with `ood`."""

    def __init__(self, runner):
        self.runner = runner
        self.normalize = NormalizeUploads(runner.preprocess)
        # the out-of-distribution record as this runner can use it (no knn where it computes no kNN distance)
        ood = getattr(runner, "ood", None)  # a runner-like object (the app takes any) may have none
        self.ood = usable(ood, ood is not None and runner.gives_knn())

    def __getattr__(self, name):  # path, format, model_name, classes, preprocess, metadata, session, ...
        if name == "runner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.runner, name)

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        return self._probabilities(self.runner.logits(self.normalize(images)))

    @torch.no_grad()
    def scored(self, images: list[np.ndarray]) -> tuple[np.ndarray, dict]:
        """(probabilities, {score name: N values}): one forward pass gives both (`Runner.ood_scores`)."""
        logits, scores = self.runner.ood_scores(self.normalize(images))
        return self._probabilities(logits), scores

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        # a sigmoid per label for a multi-label model (Runner.probabilities' rule; any runner-like object works)
        logits = logits.float()
        probs = logits.sigmoid() if getattr(self.runner, "task", SINGLE) == MULTILABEL else logits.softmax(1)
        return probs.cpu().numpy()


def open_explainer(runner, settings) -> tuple[object | None, dict]:
    """(explain.Explainer, what /metadata says) for a checkpoint runner: the Explainer reads the checkpoint again
    into a model of its own (Grad-CAM's hooks see every forward pass, so it cannot share the served one), on
    the runner's device (settings.device for a runner object without one). Its Grad-CAM layer is found now, on
    a blank image, so that a model without one (a vision transformer) is known at start-up: (None, the reason),
    and /explain says so instead of failing on every request."""
    explainer = Explainer(runner.path, device=str(getattr(runner, "device", settings.device)), batch_size=1)
    size = explainer.predictor.preprocess.img_size
    blank = to_layout(torch.zeros(1, 3, size, size, device=explainer.runner.device), explainer.runner.channels_last)
    try:
        layer = explainer.find_layer(blank)
    except NoFeatureMap as e:
        log.warning("/explain is not available: %s", e)
        return None, {"available": False, "reason": str(e)}
    return explainer, {"available": True, "method": "Grad-CAM (Selvaraju et al., 2017)", "layer": layer.describe()}
