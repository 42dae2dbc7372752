"""imgclf: from a folder of images to a trained, evaluated classifier and its predictions.

    import imgclf
    res = imgclf.train(data="digits", model="smallcnn", epochs=5)
    metrics = imgclf.evaluate(res["run_dir"] + "/best.pt", split="val")
    print(imgclf.Predictor(res["run_dir"] + "/best.pt").predict("some.png"))
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["train", "evaluate", "Predictor", "list_models", "check_data", "save_samples", "TrainConfig", "__version__"]


def __getattr__(name):
    # Lazy, so that `imgclf --help` and `imgclf check` do not pay for importing torch models they never use.
    if name == "train":
        from .training import train
        return train
    if name == "evaluate":
        from .evaluation import evaluate
        return evaluate
    if name == "Predictor":
        from .predict import Predictor
        return Predictor
    if name == "list_models":
        from .models.registry import list_models
        return list_models
    if name == "check_data":
        from .data.check import check_data
        return check_data
    if name == "save_samples":
        from .data.samples import save_samples
        return save_samples
    if name == "TrainConfig":
        from .config import TrainConfig
        return TrainConfig
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
