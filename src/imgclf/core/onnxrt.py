"""onnxruntime settings and imgclf's ONNX metadata, without torch.

Shared by `runtime.OnnxRunner` (the full install: predict, evaluate, export's verification) and the slim server
(`serve.onnx_model`, which must never import torch), so an ONNX export runs with the same session options, on
the same providers and with the same metadata checks wherever it is opened: the same graph optimisations give
the same numbers.
"""

from __future__ import annotations

import json
import logging

from imgclf.core.errors import CheckpointError

log = logging.getLogger(__name__)

META_KEY = "imgclf"  # metadata_props key of the JSON every ONNX export carries (exporting.make_metadata)


def session_options(threads: int = 0, *, spin: bool = True):
    """onnxruntime options: all graph optimisations, `threads` intra-op threads (0: onnxruntime's default, one
    per physical core), one inter-op thread.

    No memory pattern: ORT plans and keeps one per input shape, so a server seeing every batch size from 1 to
    32 grew by 57% (Lite0 int8: 202 -> 317 MB over 400 random batch sizes; 201 -> 215 MB without it), at no
    measured cost in speed at batch 1, 16 or 32. `spin=False` stops the intra-op threads from spin-waiting
    between runs: the right thing when other threads of the process need the cores (the server decodes
    images while the model runs: 15.0 -> 12.7 ms of CPU per served image)."""
    import onnxruntime as ort

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
    import onnxruntime as ort

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
        import onnxruntime as ort
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
    return session, meta
