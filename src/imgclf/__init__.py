"""imgclf: from a folder of images to a trained, evaluated classifier and its predictions.

import imgclf
res = imgclf.train(data="digits", model="smallcnn", epochs=5)
metrics = imgclf.evaluate(res["run_dir"] + "/best.pt", split="val")
print(imgclf.Predictor(res["run_dir"] + "/best.pt").predict("some.png"))
"""

from __future__ import annotations

import importlib

from imgclf.core.version import __version__

__all__ = [
    "train",
    "lr_find",
    "evaluate",
    "Predictor",
    "predict_files",
    "list_models",
    "check_data",
    "save_samples",
    "TrainConfig",
    "export",
    "bench",
    "open_model",
    "select",
    "simulate_active_learning",
    "robustness",
    "score",
    "calibrate",
    "embed",
    "similar",
    "__version__",
]


_LAZY = {
    "train": ("training.api", "train"),
    "lr_find": ("training.api", "lr_find"),
    "evaluate": ("evaluation.command", "evaluate"),
    "Predictor": ("infer.predict", "Predictor"),
    "predict_files": ("infer.stream", "predict_files"),
    "list_models": ("models.registry", "list_models"),
    "check_data": ("data.check", "check_data"),
    "save_samples": ("data.samples", "save_samples"),
    "TrainConfig": ("training.options", "TrainConfig"),
    "export": ("exporting.export", "export"),
    "bench": ("exporting.bench", "bench"),
    "open_model": ("infer.runtime", "open_model"),
    "select": ("studies.active", "select"),
    "simulate_active_learning": ("studies.active", "simulate"),
    "robustness": ("evaluation.robustness", "robustness"),
    "score": ("training.curriculum", "score"),
    "calibrate": ("evaluation.calibration", "calibrate"),
    "embed": ("infer.embed", "embed"),
    "similar": ("studies.similar", "similar"),
}


def __getattr__(name):
    # Lazy, so that `imgclf --help` and `imgclf check` do not pay for importing torch models they never use.
    if name not in _LAZY:
        raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attr)
