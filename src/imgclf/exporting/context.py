"""What a format's writer is given (`ExportContext`), and what every writer uses: a quiet console, the
metadata as JSON.

A writer is `write(ctx, path, meta) -> None`: it writes the file at `path` with `meta` (the imgclf metadata,
`export.make_metadata`) inside it, and may add what it did to `meta["export"]` (exporter, opset, quantization).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field

import torch

from imgclf.core.formats import DEFAULT_OPSET
from imgclf.exporting.verify import ImageSample, batched_outputs
from imgclf.infer.runtime import CheckpointRunner

log = logging.getLogger(__name__)

CALIB_METHODS = ("minmax", "entropy", "percentile")  # onnxruntime's calibration methods, in the int8 writer's order
DEFAULT_INT8_TRIES = 6  # quantizations at most: the 3 calibration methods, then 3 sets of measured fp32 layers
# the int8 writer stops trying once a file keeps this share of the verification images' labels (and meets the
# bar): 99% of 153 images is 152, of 99 or fewer every label
DEFAULT_INT8_TARGET = 0.99


@dataclass
class ExportContext:
    """What a format's writer gets: `model` (the checkpoint's network with its temperature and test-time
    augmentation) to trace or export on `example`; real images (`calib()` for calibration, `check` with the
    reference's `check_logits()` for a writer that judges what it makes, as int8.py does); the export's options
    (`opset`, the int8 settings). A writer records what it did in `info`."""

    ref: CheckpointRunner  # the checkpoint, eager fp32, NCHW, on the cpu
    check: torch.Tensor  # the verification images (real, preprocessed): the int8 writer judges its tries on them
    calibration: ImageSample  # real preprocessed images for int8 calibration (read on the first `calib()`)
    opset: int = DEFAULT_OPSET
    calib_method: str = "minmax"  # the first calibration method the int8 writer tries
    # 7-bit weights (no int16 saturation in AVX2's u8 x s8 multiply-add; see int8.py); None: 7-bit, and an 8-bit try
    # where the 7-bit ones miss the target on a CPU that computes it exactly (VNNI)
    reduce_range: bool | None = None
    int8_tries: int = DEFAULT_INT8_TRIES  # quantizations the int8 writer may make before it settles for its best
    int8_target: float = DEFAULT_INT8_TARGET  # the agreement at which the int8 writer stops trying
    info: dict = field(default_factory=dict)  # what the writer did (exporter, opset, quantization): into the metadata
    example: torch.Tensor = field(init=False)  # 2 real preprocessed images: the example input for tracing / export
    _check_outputs: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        # a copy, not a view: torch.export saves its example inputs, and a view would drag the whole batch along
        self.example = (self.check[:2] if len(self.check) >= 2 else self.check.repeat(2, 1, 1, 1)).clone()

    @property
    def model(self) -> torch.nn.Module:
        """What is exported: the network with its temperature and test-time augmentation (tta.Trusted)."""
        return self.ref.net

    def calib(self) -> torch.Tensor:
        """The calibration images, read on the first call; where they come from goes into `info["calib_data"]`."""
        images, self.info["calib_data"] = self.calibration.load()
        return images

    def check_outputs(self) -> dict:
        """The reference's outputs (logits, features, knn with a bank: Runner.outputs) on the verification images,
        computed once, in one forward pass each (eager fp32 is the slow part)."""
        if self._check_outputs is None:
            self._check_outputs = batched_outputs(self.ref.outputs, self.check, 32)
        return self._check_outputs

    def check_logits(self) -> torch.Tensor:
        """The reference's logits on the verification images (`check_outputs`)."""
        return self.check_outputs()["logits"]


def meta_json(meta: dict) -> str:
    return json.dumps(meta, default=str, sort_keys=True)


@contextlib.contextmanager
def quiet():
    """Exporters print progress to stdout and warn about deprecations we have chosen knowingly: keep the
    console to imgclf's own lines (the captured text goes to the debug log)."""
    buf = io.StringIO()
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime.quantization warns on the root logger (BatchNorm "weights")
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(before)
            if buf.getvalue().strip():
                log.debug("%s", buf.getvalue().strip())
