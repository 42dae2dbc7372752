"""What the app serves, chosen from what it is given, without importing torch for an ONNX export.

A served model has the `runtime.Runner` attributes the app shows (`path`, `format`, `model_name`, `classes`,
`preprocess`, `metadata()`, `task`, `thresholds`) and `probabilities(images)`: decoded uint8 S x S x 3 NumPy
arrays in, float32 N x C NumPy probabilities out (softmax, or a sigmoid per label for a multi-label model).
Two kinds:

- `onnx_model.OnnxModel`: a `.onnx` file (onnx or onnx-int8 export) in onnxruntime with NumPy preprocessing.
  The only kind the slim install (`imgclf-serve`, no PyTorch) has, and the one `imgclf serve` uses for `.onnx`
  files too, so both answer alike.
- `runner_model.RunnerModel`: any other file (`runtime.open_model`: checkpoints, TorchScript, pt2,
  dynamic-int8) or a Runner object handed to `create_app`, through PyTorch.

A path is checked (`core.modelfile.check_model_file`) and known as ONNX (`is_onnx_path`) by the functions
`runtime.open_model` uses, so both refuse a bad path in the same words. What imports torch (`infer.runtime`,
`runner_model`) is imported only when a file or runner needs it: the slim install has no torch.
"""

from __future__ import annotations

import logging
import os

from imgclf.core.errors import UsageError
from imgclf.core.modelfile import check_model_file, is_onnx_path
from imgclf.serve.onnx_model import OnnxModel

log = logging.getLogger(__name__)


def open_served(runner_or_path, settings):
    """(runner, served model) for `create_app`: `runner` is what was given or opened (the CLI prints its name,
    format and classes), `served` the object with `probabilities`. Raises ImgclfError for a bad file."""
    if isinstance(runner_or_path, (str, os.PathLike)):
        path = str(runner_or_path)
        check_model_file(path)
        if is_onnx_path(path):
            # spin=False: onnxruntime's threads must not spin-wait on the cores the decode threads need
            model = OnnxModel(path, device=settings.device, threads=settings.threads, spin=False)
            return model, model
        runner = _open_with_torch(path, settings)
    else:
        runner = runner_or_path
    # a served model already (probabilities of images); a Runner's `probabilities` takes logits, so it needs one
    if callable(getattr(runner, "probabilities", None)) and not callable(getattr(runner, "logits", None)):
        return runner, runner
    from imgclf.serve.runner_model import RunnerModel  # noqa: PLC0415 - imports torch: never on the slim path

    return runner, RunnerModel(runner)


def _open_with_torch(path: str, settings):
    try:
        from imgclf.infer.runtime import open_model  # noqa: PLC0415 - imports torch: never on the slim path
    except ModuleNotFoundError as e:  # the slim install
        raise UsageError(
            f"'{path}' is not an ONNX export (its name does not end in .onnx), and this install has no "
            f"{e.name or 'PyTorch'}, so it serves ONNX exports only: serve the file `imgclf export {path} "
            f"--format onnx-int8` writes (or rename an ONNX file to *.onnx), or pip install imgclf"
        ) from None
    # settings.threads is for onnxruntime sessions only: PyTorch's thread count is the process's to set (the CLI does)
    return open_model(path, device=settings.device, precision=settings.precision, spin=False)


# The longer side of an explanation overlay, pixels: what a web page shows, never a 12-megapixel PNG.
OVERLAY_MAX_SIDE = 1024


def open_explainer(runner, settings) -> tuple[object | None, dict]:
    """(explain.Explainer or None, what /metadata says about it) for `runner`: an Explainer (Grad-CAM, its own
    copy of the model) for a checkpoint only, since an export gives no gradients. Decided here, by the format's
    name, so that serving an ONNX export never imports torch."""
    fmt = getattr(runner, "format", None)
    if fmt != "checkpoint":
        return None, {
            "available": False,
            "reason": f"explanations need the model's gradients, which an exported file ({fmt}) does not give: "
            f"serve the checkpoint it was exported from (runs/NAME/best.pt) to use /explain",
        }
    if not settings.explain:
        return None, {"available": False, "reason": "explanations are switched off on this server (--no-explain)"}
    from imgclf.serve.runner_model import open_explainer as open_checkpoint_explainer  # noqa: PLC0415 - torch

    return open_checkpoint_explainer(runner, settings)
