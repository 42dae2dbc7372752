"""The export formats, one table (after Ultralytics' `export_formats`): the names `imgclf export --format`
accepts and its --help lists, each file's suffix, the packages it needs, whether it is int8 (which decides its
verification rule), the function that writes it (in exporting.py) and the one that opens it as a Runner (in
runtime.py). A new format is one entry here plus its writer and opener.

Without torch on purpose: the CLI builds its help from this table, and `imgclf --help` must not import torch.
So the table's writers and openers are named ("package.module:function") and imported when first called; any
callable does as well (a test, or a format defined outside imgclf).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

# 20: the first opset with a Gelu op (onnxruntime >= 1.17 runs it). At 18, GELU is exported as an Erf expression
# whose Mul/Add nodes the int8 quantizer quantizes one by one (airnet_small on CIFAR-10: 80% instead of 87.6%).
DEFAULT_OPSET = 20


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # default file name: <checkpoint stem><suffix>, next to the checkpoint
    description: str
    write: Callable  # (ExportContext, path, metadata) -> None: writes the file at path
    open: Callable  # (path, found, *, device, spin) -> Runner (found: what runtime.open_model read, or None)
    packages: tuple = ()  # (import name, pip name)
    int8: bool = False
    note: str = ""


@dataclass(frozen=True)
class Named:
    """The function "package.module:function", imported when first called."""

    ref: str

    def __call__(self, *args, **kwargs):
        module, name = self.ref.split(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


_ONNX = (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"))

FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in [
        ExportFormat(
            "torchscript",
            ".ts",
            "TorchScript (torch.jit.trace + freeze): the seed's format",
            Named("imgclf.exporting.writers:write_torchscript"),
            Named("imgclf.infer.runtime:open_torchscript"),
            note="torch.jit is deprecated in current PyTorch; prefer pt2 for new deployments",
        ),
        ExportFormat(
            "pt2",
            ".pt2",
            "torch.export program (ATen graph), the modern replacement for TorchScript",
            Named("imgclf.exporting.writers:write_pt2"),
            Named("imgclf.infer.runtime:open_pt2"),
        ),
        ExportFormat(
            "onnx",
            ".onnx",
            f"ONNX, fp32, opset {DEFAULT_OPSET}, dynamic batch (dynamo exporter)",
            Named("imgclf.exporting.writers:write_onnx"),
            Named("imgclf.infer.runtime:open_onnx"),
            packages=_ONNX,
        ),
        ExportFormat(
            "onnx-int8",
            ".int8.onnx",
            "ONNX int8: onnxruntime static quantization calibrated on real images",
            Named("imgclf.exporting.int8:write_onnx_int8"),
            Named("imgclf.infer.runtime:open_onnx"),
            packages=_ONNX,
            int8=True,
        ),
        ExportFormat(
            "dynamic-int8",
            ".dynamic-int8.pt",
            "the seed's quantize_dynamic: int8 weights for nn.Linear only",
            Named("imgclf.exporting.writers:write_dynamic_int8"),
            Named("imgclf.infer.runtime:open_dynamic_int8"),
            int8=True,
            note="only Linear layers are quantized: a CNN is almost all convolutions, so this speeds it up very little",
        ),
    ]
}
