"""What a trained model carries besides its weights, without torch: how a file becomes its input (`Preprocess`).

Every checkpoint and every export stores a `Preprocess` as a plain dict; training, prediction, exports and the
slim ONNX server all read it back through `Preprocess.from_dict`, so they prepare images alike and refuse the
same damaged files.
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
    def from_dict(cls, d: dict, path: str | None = None) -> Preprocess:
        """From a checkpoint's or an export's metadata, checked: whole sizes of at least 1 pixel, three means and
        three non-zero standard deviations (as numbers), a known interpolation (files from before it was saved
        mean bilinear). Raises CheckpointError.

        `path`: the file it came from, named in the messages (the slim server's). Without it a missing or
        malformed field raises its KeyError, TypeError or ValueError for the caller to word (`runtime`: "incomplete
        imgclf metadata"); a checkpoint's entries are checked before (`checkpoint.validate_checkpoint`)."""
        try:
            sizes = int(d["img_size"]), int(d["resize"])
            stats = [float(v) for v in d["mean"]], [float(v) for v in d["std"]]
        except (KeyError, TypeError, ValueError) as e:
            if path is None:
                raise
            raise CheckpointError(
                f"'{path}' has incomplete imgclf metadata (preprocessing: {e}): export it again with imgclf export"
            ) from None
        try:
            p = cls(*sizes, *stats, interpolation=d.get("interpolation", "bilinear"))
        except ValueError as e:
            raise CheckpointError(f"preprocessing in this file: {e} (written by a newer imgclf?)") from None
        if len(p.mean) != 3 or len(p.std) != 3 or not all(p.std) or p.img_size < 1 or p.resize < 1:
            if path is not None:
                raise CheckpointError(f"'{path}' has invalid preprocessing {p.to_dict()}: export it again")
            raise CheckpointError(
                f"preprocessing in this file is invalid ({p.to_dict()}): it needs three means, three non-zero "
                "standard deviations and sizes of at least 1 pixel"
            )
        return p
