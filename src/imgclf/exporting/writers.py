"""The writers of torchscript, pt2, onnx and dynamic-int8 (export.py describes the formats); onnx-int8's is in
int8.py. Each is named by its entry in the formats table (core/formats.py), is `write(ctx, path, meta)` (see
context.py) and puts `meta` inside the file, where the format's opener in infer/runtime.py reads it back."""

from __future__ import annotations

import json
import logging

import torch

from imgclf.core.version import __version__
from imgclf.exporting.context import ExportContext, meta_json, quiet
from imgclf.exporting.outputs import bank_as_float16, feature_module, feature_nodes, graph_outputs, output_names
from imgclf.infer.runtime import DYNAMIC_INT8_FORMAT, META_KEY, META_NAME, quantize_linear_dynamic
from imgclf.models.checkpoint import model_from_checkpoint

log = logging.getLogger(__name__)

MAX_BATCH = 4096  # upper bound of the dynamic batch dimension in torch.export / ONNX


def torch_export(ctx: ExportContext, module: torch.nn.Module | None = None, key: str = "exported_program"):
    """The torch.export program of `module` (default: the model), with a dynamic batch dimension, made once per
    export and kept in `ctx.info[key]` (pt2 saves the model's; the ONNX writers convert the feature module's)."""
    if key not in ctx.info:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with quiet(), torch.no_grad():
            ep = torch.export.export(
                module if module is not None else ctx.model, (ctx.example,), dynamic_shapes=({0: batch},), strict=False
            )
        ctx.info[key] = ep
    return ctx.info[key]


def write_torchscript(ctx: ExportContext, path: str, meta: dict) -> None:
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(ctx.model, ctx.example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())  # inlines weights, folds Conv+BatchNorm
        torch.jit.save(frozen, path, _extra_files={META_NAME: meta_json(meta)})


def write_pt2(ctx: ExportContext, path: str, meta: dict) -> None:
    ep = torch_export(ctx)
    with quiet():
        torch.export.save(ep, path, extra_files={META_NAME: meta_json(meta)})


def onnx_fp32(ctx: ExportContext, path: str) -> str:
    """Write the fp32 ONNX graph to `path`; returns which exporter produced it. Its outputs are outputs.py's:
    "logits", "features" and (with a bank) "knn", each with the dynamic batch dimension.

    The dynamo exporter (from the torch.export program) gives the cleaner graph here: BatchNorm folded into
    the convolutions, EfficientNet's "same" padding as static pads (the TorchScript-based exporter emits a
    Shape/Slice/Pad chain per convolution). The old exporter is the fallback for a model dynamo cannot take.
    Both run the feature module's forward hook in Python as they trace, so both see the head's input."""
    names = output_names(ctx.ref)
    module = feature_module(ctx.ref)
    try:
        exporter = _onnx_export(ctx, module, path, names)
    finally:
        module.remove()
    bank_float16_file(path)  # where an exporter folded the bank's Cast into a float32 constant
    ctx.info.update(exporter=exporter, opset=ctx.opset, outputs=names)
    return exporter


def _onnx_export(ctx: ExportContext, module: torch.nn.Module, path: str, names: list[str]) -> str:
    """`module` to ONNX at `path` with the output `names`: dynamo, else the TorchScript-based exporter."""
    try:
        ep = torch_export(ctx, module, key="feature_program")
        with quiet():
            torch.onnx.export(
                ep,
                (ctx.example,),
                path,
                dynamo=True,
                opset_version=ctx.opset,
                external_data=False,
                input_names=["input"],
                output_names=names,
                verbose=False,
            )
        return "dynamo"
    except Exception as e:
        log.warning(
            "dynamo ONNX exporter failed (%s); using the TorchScript-based exporter",
            str(e).splitlines()[0][:160] if str(e) else type(e).__name__,
        )
    with quiet(), torch.no_grad():
        torch.onnx.export(
            module,
            (ctx.example,),
            path,
            dynamo=False,
            opset_version=ctx.opset,
            input_names=["input"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
        )
    return "torchscript-based"


def bank_float16_file(path: str) -> None:
    """outputs.bank_as_float16 on the ONNX file at `path` (rewritten only where it changes something)."""
    import onnx  # noqa: PLC0415 - heavy; only the ONNX formats need it

    model = onnx.load(path)
    if bank_as_float16(model, feature_nodes(model)):
        onnx.save(model, path)


def add_onnx_metadata(path: str, meta: dict) -> None:
    """`meta` into the ONNX file's metadata_props["imgclf"], checked by onnx.checker, written back to `path`."""
    import onnx  # noqa: PLC0415 - heavy; only the ONNX formats need it

    model = onnx.load(path)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, meta_json(meta)
    model.producer_name, model.producer_version = "imgclf", __version__
    if "outputs" in meta:
        meta["outputs"] = graph_outputs(model)  # the names make_metadata promised, with the graph's shapes
    model.doc_string = f"imgclf {meta['format']} export of {meta['model']} ({len(meta['classes'])} classes)"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_onnx(ctx: ExportContext, path: str, meta: dict) -> None:
    onnx_fp32(ctx, path)
    meta["export"].update(exporter=ctx.info["exporter"], opset=ctx.opset)
    add_onnx_metadata(path, meta)


def write_dynamic_int8(ctx: ExportContext, path: str, meta: dict) -> None:
    model = model_from_checkpoint(ctx.ref.ckpt, "cpu", channels_last=False)  # a fresh copy to quantize
    q = quantize_linear_dynamic(model)
    blob = {
        "format": DYNAMIC_INT8_FORMAT,
        "version": 1,
        "meta": json.loads(meta_json(meta)),
        "state_dict": q.state_dict(),
    }
    torch.save(blob, path)  # plain data, quantized tensors and dtypes: loads with weights_only=True
