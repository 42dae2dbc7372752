"""The export formats, one table (after Ultralytics' `export_formats`): the names `imgclf export --format`
accepts and its --help lists, each file's suffix, the packages it needs, whether it is int8 (which decides its
verification rule), the options it takes besides those every format takes, the function that writes it (in
exporting/writers.py, or exporting/int8.py) and the one that opens it as a Runner (in infer/runtime.py). A new format is one entry here
plus its writer and opener.

Without torch on purpose: the CLI builds its help from this table, and `imgclf --help` must not import torch.
So the table's writers and openers are named ("package.module:function", core/lazy.py) and imported when first
called; any callable does as well (a test, or a format defined outside imgclf).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imgclf.core.lazy import Named

# 20: the first opset with a Gelu op (onnxruntime >= 1.17 runs it). At 18, GELU is exported as an Erf expression
# whose Mul/Add nodes the int8 quantizer quantizes one by one (airnet_small on CIFAR-10: 80% instead of 87.6%).
DEFAULT_OPSET = 20


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # default file name: <checkpoint stem><suffix>, next to the checkpoint
    write: Callable  # (ExportContext, path, metadata) -> None: writes the file at path
    open: Callable  # (path, found, *, device, spin, threads) -> Runner (found: what runtime.open_model read, or None)
    packages: tuple = ()  # (import name, pip name)
    int8: bool = False
    note: str = ""
    # the options of `export` (its keyword arguments, the CLI's flags) this format reads beyond those every format
    # takes; `imgclf export` refuses one given to a format that does not list it
    options: tuple = ()


def format_options() -> dict[str, tuple[str, ...]]:
    """{option: the formats that take it} for the options that only some formats take."""
    taken: dict[str, tuple[str, ...]] = {}
    for f in FORMATS.values():
        for name in f.options:
            taken[name] = taken.get(name, ()) + (f.name,)
    return taken


_ONNX = (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"))

FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in [
        # TorchScript (torch.jit.trace + freeze): the seed's format
        ExportFormat(
            "torchscript",
            ".ts",
            Named("imgclf.exporting.writers:write_torchscript"),
            Named("imgclf.infer.runtime:open_torchscript"),
            note="torch.jit is deprecated in current PyTorch; prefer pt2 for new deployments",
        ),
        # a torch.export program (ATen graph), the modern replacement for TorchScript
        ExportFormat(
            "pt2",
            ".pt2",
            Named("imgclf.exporting.writers:write_pt2"),
            Named("imgclf.infer.runtime:open_pt2"),
        ),
        # ONNX, fp32, opset DEFAULT_OPSET, dynamic batch (dynamo exporter)
        ExportFormat(
            "onnx",
            ".onnx",
            Named("imgclf.exporting.writers:write_onnx"),
            Named("imgclf.infer.runtime:open_onnx"),
            packages=_ONNX,
            options=("opset",),
        ),
        # ONNX int8: onnxruntime static quantization calibrated on real images
        ExportFormat(
            "onnx-int8",
            ".int8.onnx",
            Named("imgclf.exporting.int8:write_onnx_int8"),
            Named("imgclf.infer.runtime:open_onnx"),
            packages=_ONNX,
            int8=True,
            options=("opset", "calib_images", "calib_method", "int8_tries", "int8_target", "reduce_range"),
        ),
        # the seed's quantize_dynamic: int8 weights for nn.Linear only
        ExportFormat(
            "dynamic-int8",
            ".dynamic-int8.pt",
            Named("imgclf.exporting.writers:write_dynamic_int8"),
            Named("imgclf.infer.runtime:open_dynamic_int8"),
            int8=True,
            note="only Linear layers are quantized: a CNN is almost all convolutions, so this speeds it up very little",
        ),
    ]
}
