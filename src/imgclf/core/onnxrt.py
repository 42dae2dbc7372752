"""onnxruntime settings and imgclf's ONNX metadata, without torch.

Shared by `runtime.OnnxRunner` (the full install: predict, evaluate, export's verification) and the slim server
(`serve.onnx_model`, which must never import torch), so an ONNX export runs with the same session options, on
the same providers, with the same thread count and the same metadata checks wherever it is opened
(`open_export`): the same graph optimisations give the same numbers.

onnxruntime is imported when first needed: it is an optional package of the full install, and this module is
imported by every command.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from imgclf.core.cpu import int8_8bit_exact
from imgclf.core.errors import CheckpointError
from imgclf.core.formats import FORMATS

log = logging.getLogger(__name__)

META_KEY = "imgclf"  # metadata_props key of the JSON every ONNX export carries (exporting/export.py's make_metadata)


def session_options(threads: int = 0, *, spin: bool = True):
    """onnxruntime options: all graph optimisations, `threads` intra-op threads (0: onnxruntime's default, one
    per physical core), one inter-op thread.

    No memory pattern: ORT plans and keeps one per input shape, so a server seeing every batch size from 1 to
    32 grew much more with it, at no measured cost in speed without it. `spin=False` stops the intra-op threads
    from spin-waiting between runs: the right thing when other threads of the process need the cores (the
    server decodes images while the model runs). The figures: docs/benchmarks.md."""
    import onnxruntime as ort  # noqa: PLC0415 - optional package, see the module's docstring

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: ORT warns about initializers it folds
    so.enable_mem_pattern = False
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def providers_for(device: str | None, *, cuda_by_default: bool) -> list[str]:
    """Execution providers for `device` ("auto", "cpu", "cuda", "cuda:N"). "auto" takes CUDA when
    `cuda_by_default` (the caller knows a GPU is there) and onnxruntime-gpu is installed."""
    import onnxruntime as ort  # noqa: PLC0415 - optional package, see the module's docstring

    dev = str(device or "auto").lower()
    providers = ["CPUExecutionProvider"]
    if dev.startswith("cuda") or (dev == "auto" and cuda_by_default):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif dev.startswith("cuda"):
            raise CheckpointError(
                "--device cuda for an ONNX model needs onnxruntime-gpu: pip install onnxruntime-gpu, or use --device cpu"
            )
    return providers


def open_session(path: str, *, device: str | None, threads: int = 0, spin: bool = True, cuda_by_default: bool):
    """(InferenceSession, imgclf metadata dict) for the ONNX file at `path`. Raises CheckpointError."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional package: a missing one is a one-line error
    except ImportError:
        raise CheckpointError(f"'{path}' is an ONNX model: pip install onnxruntime to run it") from None
    providers = providers_for(device, cuda_by_default=cuda_by_default)
    try:
        session = ort.InferenceSession(str(path), session_options(threads, spin=spin), providers=providers)
    except Exception as e:
        raise CheckpointError(f"'{path}' is not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
    custom = session.get_modelmeta().custom_metadata_map
    if META_KEY not in custom:
        raise CheckpointError(
            f"'{path}' is an ONNX model without imgclf metadata (class names, preprocessing): "
            f"export it with imgclf export"
        )
    try:
        meta = json.loads(custom[META_KEY])
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' has unreadable imgclf metadata: export it again with imgclf export")
    if session.get_providers()[0] == "CPUExecutionProvider":
        check_int8_weights(path, meta)
    return session, meta


def check_int8_weights(path: str, meta: dict) -> None:
    """An onnx-int8 file with 8-bit weights (`export.quantization.reduce_range` false) on an x86 CPU without VNNI
    is refused: onnxruntime's kernels there saturate, and its answers would be wrong (exporting/int8.py)."""
    quant = (meta.get("export") or {}).get("quantization") or {}
    if quant.get("reduce_range") is False and not int8_8bit_exact():
        raise CheckpointError(
            f"'{path}' has 8-bit int8 weights, which onnxruntime computes exactly on x86 only with VNNI "
            f"(AVX512-VNNI or AVX-VNNI), and this CPU has none: its answers would be wrong here; export it again "
            f"with --reduce-range (7-bit weights, right on every CPU)"
        )


def default_threads() -> int:
    """Intra-op threads when none are given: PyTorch's count when this process already runs PyTorch (the cores
    PyTorch would use, honouring OMP_NUM_THREADS and torch.set_num_threads, which `imgclf serve --threads` sets),
    else $OMP_NUM_THREADS, else 0 (onnxruntime's default, one per physical core: the same number PyTorch would
    pick). Never imports torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def cuda_by_default() -> bool:
    """Whether "auto" should take CUDA: where PyTorch is loaded, whether it sees a GPU; without it (the slim
    server) yes, wherever onnxruntime-gpu is installed (`providers_for` checks that)."""
    torch = sys.modules.get("torch")
    return bool(torch.cuda.is_available()) if torch is not None else True


def open_export(path: str, *, device: str | None, threads: int | None = None, spin: bool = True):
    """(InferenceSession, imgclf metadata dict, what it runs on) for the ONNX export at `path`: `threads` None
    takes `default_threads()`, 0 onnxruntime's own. What it runs on: {"device", "precision", "providers",
    "threads"} ("auto" for onnxruntime's own count), shown by /metadata. Raises CheckpointError."""
    threads = default_threads() if threads is None else int(threads)
    session, meta = open_session(path, device=device, threads=threads, spin=spin, cuda_by_default=cuda_by_default())
    providers = session.get_providers()
    runs_on = {
        "device": "cuda" if providers[0].startswith("CUDA") else "cpu",
        "precision": "int8" if getattr(FORMATS.get(meta.get("format", "onnx")), "int8", False) else "fp32",
        "providers": providers,
        "threads": threads or "auto",  # auto: onnxruntime's, one per physical core
    }
    return session, meta, runs_on
