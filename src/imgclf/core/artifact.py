"""What a trained model carries besides its weights, without torch: how a file becomes its input (`Preprocess`).

Every checkpoint and every export stores a `Preprocess` as a plain dict; training, prediction, exports and the
slim ONNX server all read it back through `Preprocess.from_dict`, so they prepare images alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from imgclf.core.errors import CheckpointError

# Resampling filters a Preprocess may name: each exists in PIL (files), in torch's interpolate and grid_sample
# (whole batches) and in torchvision's transforms, so every path resizes alike (data/images.py maps them to PIL's).
INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic")


@dataclass
class Preprocess:
    """How a file becomes model input. Stored in every checkpoint; `predict` and exports use it as is."""

    img_size: int  # square crop fed to the model, pixels
    resize: int  # shorter side after loading, pixels (then a centre crop of img_size)
    mean: list
    std: list
    interpolation: str = "bilinear"  # every resize of the image: on load, in the decoded cache, random resized crops

    def __post_init__(self):
        if self.interpolation not in INTERPOLATION_NAMES:
            raise ValueError(f"interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATION_NAMES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """From a checkpoint or an export's metadata; those from before `interpolation` was saved mean bilinear."""
        try:
            return cls(
                **{k: d[k] for k in ("img_size", "resize", "mean", "std") if k in d},
                interpolation=d.get("interpolation", "bilinear"),
            )
        except ValueError as e:
            raise CheckpointError(f"preprocessing in this file: {e} (written by a newer imgclf?)") from None
