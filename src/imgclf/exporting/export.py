"""Export a checkpoint to deployment formats; every file is checked against eager PyTorch before it exists.

One table of formats (`FORMATS`, in export_formats.py): name, default suffix, the packages it needs, whether
it is int8 (which decides its verification rule), the function here that writes it and the one in runtime.py
that opens it.

    format        what                                                        runs with
    torchscript   torch.jit.trace + freeze (the seed's format; torch.jit is    torch.jit.load
                  deprecated in current PyTorch, kept for existing users)
    pt2           torch.export program, the modern replacement                 torch.export.load(...).module()
    onnx          ONNX, dynamo exporter, opset 20, dynamic batch, fp32         onnxruntime
    onnx-int8     onnxruntime static quantization of that ONNX graph: QDQ,     onnxruntime
                  per-channel int8 weights, uint8 activations, calibrated
                  on real images preprocessed as the model expects
    dynamic-int8  the seed's quantize_dynamic on nn.Linear (a quantized       imgclf (registry + quantize_dynamic)
                  state dict, loads with weights_only=True)

Every file carries imgclf metadata (format, model name, classes, preprocessing, training config, the source
checkpoint): ONNX `metadata_props["imgclf"]`, `extra/imgclf.json` in TorchScript and pt2 archives, a `meta`
entry in the dynamic-int8 dict. `runtime.open_model` reads any of them.

Verification (`verify`): the export and the checkpoint (eager fp32, NCHW) run on the same real images, as a
batch and one image alone (the batch dimension must really be dynamic): by default all of the validation split
(the checkpoint's recorded data, or `verify_data`) up to 500 images, so hymenoptera's 153 val images all count.
Rules, defended in `tolerance` and `compare`:
- fp32 formats: max |logit difference| <= 1e-3 x max(1, max |reference logit|). Kernels differ (oneDNN vs
  MLAS, folded BatchNorm), so bit-equality is not expected, but anything past 0.1% of the logit scale is a bug.
  With that bound the top-1 label can only change where the reference's top-2 margin is under twice the bound;
  agreement is reported too.
- int8 formats: the bar is top-1 agreement >= 97% with the reference and a root-mean-square logit error at
  most 30% of the reference logits' standard deviation. Quantization noise may flip a label the model was
  unsure about, and which labels flip depends on the CPU's int8 kernels (VNNI or not); a broken export (wrong
  preprocessing, bad calibration, missing test-time augmentation) flips far more and moves every logit.
  Both numbers come from a sample of n images, so the verdict is a one-sided test at 95% confidence, not a
  comparison of point estimates: the agreement is a binomial proportion (k of n labels kept) and the file is
  refused only when the Wilson score upper bound of the agreement is below 97%; the mean squared logit error
  is a mean of n per-image errors and the file is refused only when its lower bound (normal approximation)
  is above (30% of the spread)^2. So a file whose true agreement is at the bar is refused with probability at
  most ~5% (at 98%: 0.4% on 153 images), and one image more or less near the bar never decides it: on 64
  images 62 kept (96.9%, which failed the old point rule on an AVX-512 VNNI Xeon) passes, refusal starts at
  5 lost; on 153 images at 9 lost (94.1%); on 500 at 22 lost (95.6%). A truly bad file is still refused:
  80% agreement from 18 images on. The RMSE rule is the same kind of test; it was already stable (a mean
  over every logit of every image, measured at 7-13% of the spread for Lite0, far from 30%), and the bound
  keeps it so at small n.
A file that fails is deleted and the export raises `VerificationError`: never a warning.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from imgclf.core.version import __version__
from imgclf.core.errors import DataError, ImgclfError, UsageError, did_you_mean
from imgclf.core.fileio import disk_full_error, human_size, temp_beside, temp_dir
from imgclf.core.formats import DEFAULT_OPSET, FORMATS, ExportFormat
from imgclf.infer.runtime import (
    DYNAMIC_INT8_FORMAT,
    META_KEY,
    META_NAME,
    CheckpointRunner,
    Runner,
    open_model,
    quantize_linear_dynamic,
)

log = logging.getLogger(__name__)

MAX_BATCH = 4096  # upper bound of the dynamic batch dimension in torch.export / ONNX
DEFAULT_CALIB_IMAGES = 256
DEFAULT_VERIFY_IMAGES = (
    500  # all of a typical validation split (hymenoptera: 153); the int8 rule's bound tightens with n
)
FP32_REL_TOL = 1e-3
INT8_MIN_AGREEMENT = 0.97
INT8_MAX_REL_RMSE = 0.30
INT8_CONFIDENCE = 0.95  # one-sided: a file at the bar is refused at most ~5% of the time (see the module docstring)
CALIB_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_INT8_TRIES = 6  # quantizations at most: the 3 calibration methods, then 3 sets of measured fp32 layers
SENSITIVITY_IMAGES = 32  # calibration images on which each quantized activation is compared with fp32


class VerificationError(ImgclfError):
    """An exported file that does not compute what the checkpoint computes. Exit code 1; nothing is written."""


@dataclass
class ExportContext:
    ref: CheckpointRunner  # the checkpoint, eager fp32, NCHW, on the cpu
    example: torch.Tensor  # 2 real preprocessed images: the example input for tracing / torch.export
    calib: Callable[[], torch.Tensor]  # real preprocessed images for int8 calibration (loaded on first call)
    check: torch.Tensor | None = None  # the verification images: the int8 writer judges its tries on them
    opset: int = DEFAULT_OPSET
    calib_method: str = "minmax"  # the first calibration method the int8 writer tries
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in AVX2's u8 x s8 multiply-add (see write_onnx_int8)
    int8_tries: int = DEFAULT_INT8_TRIES  # quantizations the int8 writer may make before it settles for its best
    info: dict = field(default_factory=dict)  # what the writer did (exporter, opset, quantization): into the metadata
    _check_logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        """What is exported: the network with its temperature and test-time augmentation (tta.Trusted)."""
        return self.ref.net

    def check_logits(self) -> torch.Tensor:
        """The reference's logits on the verification images, computed once (eager fp32 is the slow part)."""
        if self._check_logits is None:
            self._check_logits = _batched(self.ref.logits, self.check, 32)
        return self._check_logits


# --------------------------------------------------------------------------------------------- writers


def _meta_json(meta: dict) -> str:
    return json.dumps(meta, default=str, sort_keys=True)


@contextlib.contextmanager
def _quiet():
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


def _torch_export(ctx: ExportContext):
    if "exported_program" not in ctx.info:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with _quiet(), torch.no_grad():
            ep = torch.export.export(ctx.model, (ctx.example,), dynamic_shapes=({0: batch},), strict=False)
        ctx.info["exported_program"] = ep
    return ctx.info["exported_program"]


def write_torchscript(ctx: ExportContext, path: str, meta: dict) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(ctx.model, ctx.example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())  # inlines weights, folds Conv+BatchNorm
        torch.jit.save(frozen, path, _extra_files={META_NAME: _meta_json(meta)})


def write_pt2(ctx: ExportContext, path: str, meta: dict) -> None:
    ep = _torch_export(ctx)
    with _quiet():
        torch.export.save(ep, path, extra_files={META_NAME: _meta_json(meta)})


def _onnx_fp32(ctx: ExportContext, path: str) -> str:
    """Write the fp32 ONNX graph to `path`; returns which exporter produced it.

    The dynamo exporter (from the torch.export program) gives the cleaner graph here: BatchNorm folded into
    the convolutions, EfficientNet's "same" padding as static pads (the TorchScript-based exporter emits a
    Shape/Slice/Pad chain per convolution). The old exporter is the fallback for a model dynamo cannot take."""
    try:
        ep = _torch_export(ctx)
        with _quiet():
            torch.onnx.export(
                ep,
                (ctx.example,),
                path,
                dynamo=True,
                opset_version=ctx.opset,
                external_data=False,
                input_names=["input"],
                output_names=["logits"],
                verbose=False,
            )
        exporter = "dynamo"
    except Exception as e:
        log.warning(
            "dynamo ONNX exporter failed (%s); using the TorchScript-based exporter",
            str(e).splitlines()[0][:160] if str(e) else type(e).__name__,
        )
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                ctx.model,
                (ctx.example,),
                path,
                dynamo=False,
                opset_version=ctx.opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        exporter = "torchscript-based"
    ctx.info.update(exporter=exporter, opset=ctx.opset)
    return exporter


def _add_onnx_metadata(path: str, meta: dict) -> None:
    import onnx

    model = onnx.load(path)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, _meta_json(meta)
    model.producer_name, model.producer_version = "imgclf", __version__
    model.doc_string = f"imgclf {meta['format']} export of {meta['model']} ({len(meta['classes'])} classes)"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_onnx(ctx: ExportContext, path: str, meta: dict) -> None:
    _onnx_fp32(ctx, path)
    meta["export"].update(exporter=ctx.info["exporter"], opset=ctx.opset)
    _add_onnx_metadata(path, meta)


class _ImageReader:
    """onnxruntime CalibrationDataReader over real preprocessed images, 32 at a time."""

    def __init__(self, images: torch.Tensor, input_name: str, batch: int = 32):
        self.batches = [{input_name: images[i : i + batch].numpy()} for i in range(0, len(images), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        # with CalibStridedMinMax, onnxruntime calibrates one stride (here: one batch) at a time, so the
        # histogram methods never hold every activation of every calibration image at once
        self.it = iter(self.batches[start_index:end_index])

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.set_range(0, len(self.batches))


# ops that make nothing new of one activation (they move, select, clip or pool it): the quantizer carries a
# tensor's scale across them, so a tensor kept in fp32 keeps the chain through them in fp32 too
_PASS_THROUGH = frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "Identity",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "MaxPool",
        "Slice",
        "Pad",
        "Concat",
        "Split",
        "Gather",
        "Expand",
        "Tile",
        "Resize",
        "DepthToSpace",
        "SpaceToDepth",
    }
)


class _Graph:
    """The producer and consumers of each tensor of an ONNX graph."""

    def __init__(self, model):
        g = model.graph
        self.order = {n.name: i for i, n in enumerate(g.node)}
        self.initializers = {i.name for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.producer: dict = {}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)

    def tensors(self) -> set[str]:
        return set(self.inputs) | set(self.producer)

    def fp32_region(self, tensor: str) -> list[str]:
        """The nodes to leave out of quantization so that `tensor` stays fp32. onnxruntime's QDQ quantizer
        quantizes a tensor when its producer or any consumer is quantized, so: both, and on through
        pass-through ops to the next computing node either way (measured on a tiny CNN with an outlier
        channel: leaving out the producer or the consumer alone changed nothing; both fixed it)."""
        region: set[str] = set()
        stack = [("up", self.producer[tensor])] if tensor in self.producer else []
        stack += [("down", c) for c in self.consumers.get(tensor, [])]
        while stack:
            way, n = stack.pop()
            if n.name in region:
                continue
            region.add(n.name)
            if n.op_type not in _PASS_THROUGH:
                continue
            if way == "up":
                stack += [("up", self.producer[i]) for i in n.input if i in self.producer]
            else:
                stack += [("down", c) for o in n.output for c in self.consumers.get(o, [])]
        return sorted((n for n in region if n), key=self.order.__getitem__)  # a nameless node cannot be left out

    def upstream(self, tensor: str, marked) -> set[str]:
        """The `marked` tensors nearest above `tensor`: what its producer computes from."""
        found, seen = set(), set()
        stack = [i for i in self.producer[tensor].input if i] if tensor in self.producer else []
        while stack:
            t = stack.pop()
            if t in seen or t in self.initializers:
                continue
            seen.add(t)
            if t in marked:
                found.add(t)
            elif t in self.producer:
                stack += [i for i in self.producer[t].input if i]
        return found


def _channel_error(err: np.ndarray, sig: np.ndarray) -> float:
    """Mean over channels of min(1, error power / signal power). Per channel, because one channel with a large
    range can take a per-tensor scale for itself and round every other channel to zero, which a whole-tensor
    ratio would not see; capped at 1 (a channel turned to noise). Channels dead in fp32 (power under 1e-6 of
    the median live channel's: ReLU outputs that are always 0) do not count."""
    alive = sig[sig > 0]
    if not alive.size:
        return 0.0
    live = sig > 1e-6 * float(np.median(alive))
    return float(np.minimum(1.0, err[live] / sig[live]).mean())


def int8_sensitivity(fp32_path: str, int8_path: str, images: torch.Tensor, work: str, *, batch: int = 8) -> list[dict]:
    """Where a QDQ model (`int8_path`, quantized from `fp32_path`) loses its accuracy, measured: every activation
    it quantizes is read back as the int8 kernels onnxruntime really runs compute it, and compared with the same
    tensor of the fp32 model on `images`.

    The quantized tensors are the QuantizeLinear outputs, exposed as extra graph outputs: that leaves
    onnxruntime's fusion into QLinearConv, QGemm and the rest as it was (checked: same logits with and without
    them), so saturation or rounding of a particular CPU's kernels counts, unlike
    `onnxruntime.quantization.qdq_loss_debug.collect_activations`, which runs the unfused graph. Each tensor's
    error is `_channel_error`; what quantizing it added is that less the largest error of the quantized
    tensors its producer computes from. Returns one row per tensor, most added error first: tensor, error,
    error_above, added, and `nodes` (`_Graph.fp32_region`: what to leave out to keep it fp32)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from imgclf.infer.runtime import onnx_session_options

    fm, qm = onnx.load(fp32_path), onnx.load(int8_path)
    g = _Graph(fm)
    known = g.tensors()
    qinit = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    taps: dict[str, tuple] = {}  # fp32 tensor -> (its quantized tensor in the int8 model, scale, zero point)
    for n in qm.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in qinit or len(n.input) < 3:
            continue
        name = n.input[0]
        if name not in known and name.endswith("_QuantizeLinear_Input"):  # a graph output, renamed by the quantizer
            name = name[: -len("_QuantizeLinear_Input")]
        if name in known and n.input[1] in qinit and n.input[2] in qinit:
            taps[name] = (n.output[0], qinit[n.input[1]].astype(np.float32), qinit[n.input[2]])
    if not taps:
        return []
    have = {o.name for o in qm.graph.output}
    for qname, _, zp in taps.values():
        if qname not in have:
            qm.graph.output.append(
                helper.make_tensor_value_info(qname, helper.np_dtype_to_tensor_dtype(zp.dtype), None)
            )
    fnames = [t for t in taps if t not in g.inputs]  # graph inputs: the images themselves
    have = {o.name for o in fm.graph.output}
    for t in fnames:
        if t not in have:
            fm.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    qpath, fpath = os.path.join(work, "taps-int8.onnx"), os.path.join(work, "taps-fp32.onnx")
    onnx.save(qm, qpath)
    onnx.save(fm, fpath)
    so = onnx_session_options()
    sq = ort.InferenceSession(qpath, so, providers=["CPUExecutionProvider"])
    sf = ort.InferenceSession(fpath, so, providers=["CPUExecutionProvider"])
    qnames = [taps[t][0] for t in taps]
    err: dict[str, np.ndarray] = {}
    sig: dict[str, np.ndarray] = {}
    for i in range(0, len(images), batch):  # a few images at a time: every activation of a batch is held at once
        x = images[i : i + batch].numpy()
        feed = {g.inputs[0]: x}
        ref = dict(zip(fnames, sf.run(fnames, feed)))
        ref.update({t: x for t in taps if t in g.inputs})
        for t, q in zip(taps, sq.run(qnames, feed)):
            _, scale, zp = taps[t]
            f = np.asarray(ref[t], dtype=np.float32)
            if q.shape != f.shape:
                continue
            d = (q.astype(np.float32) - zp.astype(np.float32)) * scale - f
            axes = tuple(a for a in range(f.ndim) if a != 1) if f.ndim >= 2 else None  # per channel (NC...)
            err[t] = err.get(t, 0.0) + np.atleast_1d((d.astype(np.float64) ** 2).sum(axis=axes))
            sig[t] = sig.get(t, 0.0) + np.atleast_1d((f.astype(np.float64) ** 2).sum(axis=axes))
    error = {t: _channel_error(err[t], sig[t]) for t in err}
    rows = []
    for t, e in error.items():
        above = max((error[u] for u in g.upstream(t, error)), default=0.0)
        rows.append({"tensor": t, "error": e, "error_above": above, "added": e - above, "nodes": g.fp32_region(t)})
    return sorted(rows, key=lambda r: -r["added"])


def _fp32_regions(ranking: list[dict]) -> list[dict]:
    """The ranking's tensors that added error, each with nodes not already kept fp32 by one above it."""
    out, covered = [], set()
    for r in ranking:
        if r["added"] > 0 and r["nodes"] and not set(r["nodes"]) <= covered:
            out.append(r)
            covered |= set(r["nodes"])
    return out


class _Int8Quantizer:
    """quantize_static with this project's settings (see write_onnx_int8). Each calibration method calibrates
    once: with onnxruntime's calibration cache (`calibration_cache_path`, where the installed version has it)
    a later try with other nodes left out only quantizes again."""

    METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

    def __init__(self, pre: str, images: torch.Tensor, work: str, *, reduce_range: bool):
        from onnxruntime.quantization import quantize_static

        self.pre, self.images, self.work, self.reduce_range = pre, images, work, reduce_range
        self.cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
        self.made = 0

    def __call__(self, method: str, exclude: list[str]) -> str:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        self.made += 1
        out = os.path.join(self.work, f"try{self.made}.onnx")
        kw = {"calibration_cache_path": os.path.join(self.work, f"ranges-{method}.json")} if self.cache else {}
        with _quiet():
            quantize_static(
                self.pre,
                out,
                _ImageReader(self.images, "input"),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=self.reduce_range,
                calibrate_method=getattr(CalibrationMethod, self.METHODS[method]),
                nodes_to_exclude=list(exclude),
                extra_options={"CalibStridedMinMax": 1},
                **kw,
            )  # one batch at a time (see _ImageReader)
        return out


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.01 else f"{x:.1%}"


_TRY_KEYS = (
    "images",
    "top1_kept",
    "top1_agreement",
    "top1_agreement_upper",
    "rel_rmse",
    "rel_rmse_lower",
    "meets_bar",
    "ok",
)


def write_onnx_int8(ctx: ExportContext, path: str, meta: dict) -> None:
    """fp32 ONNX -> quant_pre_process (symbolic shape inference, onnxruntime's basic graph optimisations:
    Conv+BatchNorm fusion, constant folding) -> quantize_static, tried until one meets the bar.

    Settings measured on this project's 2-core AVX2 CPU without VNNI (ResNet-18, 224 px, batch 32):
    QDQ with uint8 activations and int8 weights ran ~1.3x faster than int8 activations (S8S8) and ~1.4x faster
    than uint8 weights (U8U8); per-channel weights cost nothing in speed there and are kinder to accuracy; the
    QOperator format was 2x slower per-tensor and 25x slower per-channel (its per-channel QLinearConv takes
    a reference path). onnxruntime fuses the QDQ pairs into int8 convolutions when the session is created.
    GELU stays fp32 (opset 20 has a Gelu op; at opset 18 it is an Erf expression whose Mul/Add nodes the
    quantizer would quantize one by one).

    The tries, each judged by `compare` against eager PyTorch on the verification images (the numbers the
    verification then reports), stopping at the first whose agreement and RMSE meet the bar themselves (not
    only the refusal rule's bounds), at most `ctx.int8_tries` (default 6) quantizations:
      1-3. everything quantized, calibrated with `ctx.calib_method` (default minmax), then the other methods
           (entropy, percentile: they clip outliers that minmax lets stretch a tensor's scale);
      4-6. the best of those (lowest RMSE) with the tensors where it loses most kept fp32, found by measuring
           (`int8_sensitivity`, on 32 calibration images): the 1, 2, then 4 tensors that added most error.
    If none meets the bar, the best try (passing the refusal rule, then most labels kept, then lowest RMSE) is
    written and the verification decides. A model that meets it on the first try costs what it did before; one
    that does not, at most two more calibrations, one measurement and three quantizations. The file's metadata
    (`export.quantization`) records the calibration method, the fp32 nodes and why, and every try's numbers.

    `reduce_range` (default on): weights use 7 bits. On x86 CPUs without VNNI (this one), onnxruntime's
    uint8 x int8 kernels add pairs of products in int16 (VPMADDUBSW), which saturates with 8-bit weights.
    Measured here with 8-bit weights: airnet_small fully quantized fell from 86.9% to 40.1% on 2,000 CIFAR-10
    test images (its patch-whitening stem has large weights), and kept 87.6% of 87.7% on 1,000 with the stem
    in fp32; EfficientNet-Lite0 on hymenoptera lost 2 of 153 val images. With 7-bit weights: airnet_small fully
    quantized keeps 87.88% of 87.92% on all 10,000 test images, Lite0 loses 1 image (logit RMSE 13% -> 7-9%
    of their spread), at the same speed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = ctx.calib()
    if ctx.check is None:
        ctx.check = images
    want = ctx.check_logits()
    work = temp_dir("imgclf-int8-")  # removed below; one left by a killed export goes at the next int8 export
    try:
        fp32, pre = os.path.join(work, "fp32.onnx"), os.path.join(work, "pre.onnx")
        _onnx_fp32(ctx, fp32)
        with _quiet():
            quant_pre_process(fp32, pre)
        quantize = _Int8Quantizer(pre, images, work, reduce_range=ctx.reduce_range)
        tries: list[dict] = []

        def attempt(method: str, regions: list[dict]) -> None:
            nodes = list(dict.fromkeys(n for x in regions for n in x["nodes"]))
            file = quantize(method, nodes)
            r = {
                "top1_kept": 0,
                "top1_agreement": 0.0,
                "rel_rmse": math.inf,
                "meets_bar": False,
                **compare(want, _onnx_logits(file, ctx.check), int8=True),
            }  # defaults: a wrong output shape
            tries.append(
                {
                    "calibration": method,
                    "fp32_nodes": nodes,
                    "fp32_tensors": [x["tensor"] for x in regions],
                    **{k: r.get(k) for k in _TRY_KEYS},
                    "file": file,
                }
            )
            log.info(
                "int8 try %d: %s calibration, %s: top-1 agreement %d/%d, RMSE %.1f%% of logit spread",
                len(tries),
                method,
                f"{len(nodes)} nodes fp32" if nodes else "everything quantized",
                r["top1_kept"],
                r["images"],
                100 * r["rel_rmse"],
            )

        def more() -> bool:
            return len(tries) < ctx.int8_tries and not any(t["meets_bar"] for t in tries)

        for method in [ctx.calib_method] + [m for m in CALIB_METHODS if m != ctx.calib_method]:
            if tries and not more():
                break
            attempt(method, [])
        ranking, base = [], None
        if more():
            base = min(tries, key=lambda t: t["rel_rmse"])
            ranking = int8_sensitivity(pre, base["file"], images[:SENSITIVITY_IMAGES], work)
            regions = _fp32_regions(ranking)
            done = 0
            for k in (1, 2, 4):
                k = min(k, len(regions))
                if k <= done or not more():
                    break
                attempt(base["calibration"], regions[:k])
                done = k
        best = next((t for t in tries if t["meets_bar"]), None) or max(
            tries, key=lambda t: (t["ok"], t["top1_kept"], -t["rel_rmse"])
        )
        shutil.copyfile(best["file"], path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    why = {r["tensor"]: r for r in ranking}
    meta["export"].update(
        exporter=ctx.info["exporter"],
        opset=ctx.opset,
        quantization={
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "weights": "int8 per-channel",
            "activations": "uint8 per-tensor",
            "reduce_range": ctx.reduce_range,
            "calibration": best["calibration"],
            "calibration_images": int(len(images)),
            "calibration_data": ctx.info.get("calib_data"),
            "plan": "measured-fp32" if best["fp32_nodes"] else "all-int8",
            "fp32_nodes": best["fp32_nodes"],
            "fp32_reasons": [
                {
                    "tensor": t,
                    "nodes": why[t]["nodes"],
                    "error_int8": why[t]["error"],
                    "error_above": why[t]["error_above"],
                    "why": f"quantizing {t} raised the mean per-channel relative error from {_pct(why[t]['error_above'])} "
                    f"(the tensors it is computed from) to {_pct(why[t]['error'])} on "
                    f"{min(len(images), SENSITIVITY_IMAGES)} calibration images",
                }
                for t in best["fp32_tensors"]
            ],
            "tries": [{k: v for k, v in t.items() if k != "file"} for t in tries],
            "chosen_try": tries.index(best) + 1,
            "sensitivity": {
                "images": min(len(images), SENSITIVITY_IMAGES),
                "measured_on_try": tries.index(base) + 1,
                "top": [{k: r[k] for k in ("tensor", "error", "error_above", "added")} for r in ranking[:8]],
            }
            if ranking
            else None,
        },
    )
    _add_onnx_metadata(path, meta)


def _onnx_logits(path: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of a candidate ONNX file that has no imgclf metadata yet (so not an OnnxRunner)."""
    import onnxruntime as ort

    from imgclf.infer.runtime import onnx_session_options

    sess = ort.InferenceSession(path, onnx_session_options(), providers=["CPUExecutionProvider"])
    return _batched(lambda b: torch.from_numpy(sess.run(None, {"input": b.numpy()})[0]).float(), x, 32)


def write_dynamic_int8(ctx: ExportContext, path: str, meta: dict) -> None:
    from imgclf.models.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(ctx.ref.ckpt, "cpu", channels_last=False)  # a fresh copy to quantize
    q = quantize_linear_dynamic(model)
    blob = {
        "format": DYNAMIC_INT8_FORMAT,
        "version": 1,
        "meta": json.loads(_meta_json(meta)),
        "state_dict": q.state_dict(),
    }
    torch.save(blob, path)  # plain data, quantized tensors and dtypes: loads with weights_only=True


def get_format(name: str) -> ExportFormat:
    key = str(name).lower()
    if key not in FORMATS:
        raise UsageError(f"unknown export format '{name}'{did_you_mean(key, FORMATS)}; formats: {', '.join(FORMATS)}")
    fmt = FORMATS[key]
    for module, pip_name in fmt.packages:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"format {fmt.name} needs {pip_name}: pip install {pip_name}") from None
    return fmt


# --------------------------------------------------------------------------------------------- images


def sample_images(
    data: str,
    prep,
    *,
    split: str,
    n: int,
    data_root: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 4,
) -> tuple[torch.Tensor, str]:
    """Up to `n` real images of `split` of `data` (a seeded random choice), preprocessed as the model expects
    (the same decode and eval transform as evaluate and predict); N x 3 x S x S float32 and a description.

    `data` may also be a plain folder of images (no class folders), for calibration on unlabelled photos."""
    from imgclf.data.images import UnreadableImage
    from imgclf.data.pipeline import decode_one, eval_transform
    from imgclf.data.sources import Split, open_source

    try:
        src = open_source(data, data_root=data_root, val_fraction=val_fraction, seed=seed)
        s = src.split(split)
        where = f"{os.path.basename(str(data).rstrip('/')) or data} {s.name}"
    except DataError:
        from imgclf.infer.predict import expand_paths

        if not os.path.isdir(str(data)):
            raise
        paths = expand_paths([data])
        s = Split(name="images", labels=[0] * len(paths), paths=paths)
        where = f"{data} (folder of images)"
    order = np.random.default_rng(seed).permutation(len(s))
    tf = eval_transform(prep)

    def load(i):
        try:
            return tf(decode_one(s, int(i), prep.resize, prep.interpolation))
        except UnreadableImage:
            return None

    out: list[torch.Tensor] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(order), max(n, 1)):
            out += [t for t in pool.map(load, order[start : start + n - len(out)]) if t is not None]
            if len(out) >= n:
                break
    if not out:
        raise DataError(f"no readable images in {where}: pass --calib-data with a folder of images")
    return torch.stack(out[:n]), f"{len(out[:n])} images of {where}"


# --------------------------------------------------------------------------------------------- verification


def tolerance(int8: bool, ref: torch.Tensor) -> dict:
    if int8:
        return {
            "min_top1_agreement": INT8_MIN_AGREEMENT,
            "max_rel_rmse": INT8_MAX_REL_RMSE,
            "confidence": INT8_CONFIDENCE,
        }
    return {"max_abs_diff": FP32_REL_TOL * max(1.0, float(ref.abs().max()))}


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)  # one-sided: 1.645 at 95%


def agreement_upper_bound(kept: int, n: int, confidence: float = INT8_CONFIDENCE) -> float:
    """One-sided Wilson score upper bound of a binomial proportion: `kept` labels of `n` images agree.

    Wilson rather than the normal (Wald) interval: it stays inside [0, 1] and keeps its coverage near 0 and 1,
    where an int8 export's agreement lives. A closed form (no scipy), so every machine computes the same bound."""
    if n <= 0:
        return 1.0
    z, p = _z(confidence), kept / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + half) / (1 + z * z / n))


def rmse_lower_bound(per_image_sq_err: torch.Tensor, confidence: float = INT8_CONFIDENCE) -> float:
    """One-sided lower bound of the root-mean-square error from n per-image mean squared errors: the mean
    less z standard errors (normal approximation), floored at 0."""
    e = per_image_sq_err.double()
    n = len(e)
    se = float(e.std()) / math.sqrt(n) if n > 1 else 0.0
    return math.sqrt(max(0.0, float(e.mean()) - _z(confidence) * se))


def _batched(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def compare(ref: torch.Tensor, out: torch.Tensor, *, int8: bool) -> dict:
    """Numbers and the pass/fail verdict for exported logits `out` against reference logits `ref` (N x C).

    int8: `ok` is the verdict of the one-sided tests in the module docstring (refused only on evidence that the
    file is worse than the bar); `meets_bar` says whether the point estimates themselves clear it (what the
    int8 writer aims for before it settles for less)."""
    if out.shape != ref.shape:
        return {"ok": False, "reason": f"output shape {tuple(out.shape)} != {tuple(ref.shape)}", "images": len(ref)}
    diff = (out - ref).abs()
    n = int(len(ref))
    kept = int((out.argmax(1) == ref.argmax(1)).sum())
    agree = kept / max(n, 1)
    spread = float(ref.std().clamp_min(1e-12))
    per_image = ((out - ref) ** 2).mean(1)  # N: each image's mean squared logit error
    rel_rmse = float(per_image.mean().sqrt()) / spread
    tol = tolerance(int8, ref)
    r = {
        "images": n,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": agree,
        "top1_kept": kept,
        "rel_rmse": rel_rmse,
        "logit_scale": float(ref.abs().max()),
        "tolerance": tol,
    }
    if not torch.isfinite(out).all():
        r.update(ok=False, meets_bar=False, reason="non-finite logits")
    elif int8:
        upper = agreement_upper_bound(kept, n, tol["confidence"])
        lower = rmse_lower_bound(per_image, tol["confidence"]) / spread
        r.update(
            top1_agreement_upper=upper,
            rel_rmse_lower=lower,
            meets_bar=agree >= tol["min_top1_agreement"] and rel_rmse <= tol["max_rel_rmse"],
        )
        why = []
        if upper < tol["min_top1_agreement"]:
            why.append(
                f"top-1 agreement {kept}/{n} = {agree:.1%}, whose one-sided {tol['confidence']:.0%} upper bound "
                f"{upper:.1%} is below {tol['min_top1_agreement']:.0%}"
            )
        if lower > tol["max_rel_rmse"]:
            why.append(
                f"logit RMSE {rel_rmse:.1%} of the logits' spread, whose one-sided {tol['confidence']:.0%} "
                f"lower bound {lower:.1%} is above {tol['max_rel_rmse']:.0%}"
            )
        r.update(ok=not why, reason="; ".join(why))
    else:
        ok = r["max_abs_diff"] <= tol["max_abs_diff"]
        r.update(
            ok=ok,
            reason=""
            if ok
            else f"max |logit difference| {r['max_abs_diff']:.3g} > {tol['max_abs_diff']:.3g} (top-1 agreement {agree:.3f})",
        )
    return r


def verify(
    ref: Runner,
    exported: Runner,
    images: torch.Tensor,
    *,
    int8: bool,
    batch_size: int = 32,
    ref_logits: torch.Tensor | None = None,
) -> dict:
    """Run both on `images` (in batches, then the first image alone) and compare; see the module docstring.
    `ref_logits`: the reference's logits on `images` when already computed."""
    r_ref = _batched(ref.logits, images, batch_size) if ref_logits is None else ref_logits
    r_out = _batched(exported.logits, images, batch_size)
    report = compare(r_ref, r_out, int8=int8)
    if report["ok"]:
        single = exported.logits(images[:1])
        if single.shape != r_ref[:1].shape or (single - r_out[:1]).abs().max() > max(
            1e-3, 1e-3 * report["logit_scale"]
        ) * (50 if int8 else 1):
            report.update(
                ok=False,
                reason="a batch of one image gives other logits than the same image in a batch "
                "(the batch dimension is not really dynamic)",
            )
    return report


# --------------------------------------------------------------------------------------------- accuracy


def accuracy_on(
    runners: list[Runner],
    data: str,
    *,
    split: str,
    data_root=None,
    config: dict | None = None,
    batch_size: int = 64,
    cache: str = "auto",
    max_images: int | None = None,
) -> tuple[list[float], int, str]:
    """Top-1 accuracy of each runner on the same decoded images of `split` (they share one preprocessing)."""
    from imgclf.data.feed import make_feed
    from imgclf.data.pipeline import default_workers
    from imgclf.infer.logits import align_classes, infer, open_model_data

    src, s = open_model_data(config, data, split, data_root)
    if max_images is not None and len(s) > max_images:
        s = s.subset(np.random.default_rng(0).permutation(len(s))[:max_images].tolist())
    mapping = torch.as_tensor(align_classes(src.classes, runners[0].classes, data), dtype=torch.long)
    feed, bad = make_feed(
        s,
        runners[0].preprocess,
        cache=cache,
        workers=default_workers(),
        eval_batch_size=batch_size,
        desc=f"decode {split}",
    )
    for path, reason in bad:
        log.warning("left out %s: %s", path, reason)
    accs = []
    for r in runners:
        logits, labels = infer(r, feed.batches(), desc=f"{r.format} {split}")
        accs.append(float((logits.argmax(1) == mapping[labels]).float().mean()) if len(labels) else float("nan"))
    return accs, len(feed), f"{src.location} {split}"


# --------------------------------------------------------------------------------------------- export


def default_out(weights: str, fmt: ExportFormat) -> str:
    stem, _ = os.path.splitext(os.path.abspath(weights))
    return stem + fmt.suffix


def make_metadata(ref: CheckpointRunner, fmt: ExportFormat, weights: str) -> dict:
    ckpt = ref.ckpt
    return {
        "imgclf_export": 1,
        "format": fmt.name,
        "model": ref.model_name,
        "num_classes": len(ref.classes),
        "classes": list(ref.classes),
        "preprocess": ref.preprocess.to_dict(),
        "config": dict(ref.config),
        "input": {
            "name": "input",
            "shape": ["batch", 3, ref.preprocess.img_size, ref.preprocess.img_size],
            "dtype": "float32",
            "layout": "NCHW, RGB, normalised with preprocess.mean/std",
        },
        "output": {"name": "logits", "shape": ["batch", len(ref.classes)]},
        # in the graph (dynamic-int8: applied by its runner): softmax(output) = the calibrated probabilities,
        # averaged over the test-time views when tta is set
        "temperature": ref.temperature,
        "tta": ref.tta,
        "source": {
            "checkpoint": os.path.abspath(weights),
            "epoch": ckpt.get("epoch"),
            "metrics": {k: v for k, v in (ckpt.get("metrics") or {}).items() if isinstance(v, (int, float, str))},
            "data_fingerprint": ckpt.get("data_fingerprint"),
        },
        "export": {
            "imgclf_version": __version__,
            "torch_version": str(torch.__version__),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }


def export(
    weights: str,
    format: str,
    *,
    out: str | None = None,
    calib_data: str | None = None,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    calib_method: str = "minmax",
    reduce_range: bool = True,
    verify_data: str | None = None,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    data: str | None = None,
    split: str = "val",
    data_root: str | None = None,
    opset: int = DEFAULT_OPSET,
    max_eval_images: int | None = None,
    int8_tries: int = DEFAULT_INT8_TRIES,
    tta: str | None = None,
) -> dict:
    """Export checkpoint `weights` as `format`, verify it against eager PyTorch, and only then write `out`.

    Calibration images (int8): `calib_data` (a data source or a folder of images), default the training split
    of the data the checkpoint records. Verification images: the validation split of `verify_data`, default
    the recorded data (or the calibration data when the checkpoint records none), all of it up to
    `verify_images`. onnx-int8 starts with `calib_method` and makes at most `int8_tries` quantizations
    (1: that one only) before it settles for its best (see write_onnx_int8). With `data`, the accuracy
    of the checkpoint and of the export on its `split`. The checkpoint's temperature (imgclf calibrate) is in
    the exported graph; `tta` (flip, flip-crop, none: tta.py) puts test-time augmentation there too, and then the
    accuracy of the checkpoint without it is measured as well (on `data`, default the recorded data).
    Returns a report dict (also what `--json` prints)."""
    from imgclf.models.tta import check_mode

    fmt = get_format(format)
    tta = check_mode(tta)
    if calib_method not in ("minmax", "entropy", "percentile"):
        raise UsageError(
            f"--calib-method '{calib_method}': use minmax, entropy or percentile{did_you_mean(calib_method, ['minmax', 'entropy', 'percentile'])}"
        )
    for name, v in (("--calib-images", calib_images), ("--verify-images", verify_images), ("--int8-tries", int8_tries)):
        if v < 1:
            raise UsageError(f"{name} must be at least 1, got {v}")
    runner = open_model(weights, device="cpu", precision="fp32")
    if not isinstance(runner, CheckpointRunner):
        raise UsageError(
            f"'{weights}' is already an exported model ({runner.format}): export from the checkpoint it came from"
        )
    ref = CheckpointRunner(weights, device="cpu", precision="fp32", channels_last=False, ckpt=runner.ckpt, tta=tta)
    del runner
    out = os.path.abspath(out or default_out(weights, fmt))
    if os.path.isdir(out):
        raise UsageError(
            f"--out '{out}' is a folder: give a file name such as {os.path.join(out, 'model' + fmt.suffix)}"
        )
    if os.path.abspath(out) == os.path.abspath(weights):
        raise UsageError(f"--out '{out}' is the checkpoint itself: choose another file name")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    cfg = ref.config
    recorded = cfg.get("data")
    data = data or (recorded if tta is not None else None)  # --tta: what it changes is always measured
    src_kw = dict(
        data_root=data_root or cfg.get("data_root"), val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0)
    )
    vdata = verify_data or recorded or calib_data
    if not vdata:
        raise DataError(
            "the checkpoint records no data to verify the export on: pass --verify-data (or --calib-data) with images"
        )
    t0 = time.perf_counter()
    vimages, vdesc = sample_images(vdata, ref.preprocess, split="val", n=verify_images, **src_kw)
    cdata = calib_data or recorded or vdata
    calib_cache: dict = {}

    def calib() -> torch.Tensor:
        if "x" not in calib_cache:
            calib_cache["x"], calib_cache["desc"] = sample_images(
                cdata, ref.preprocess, split="train", n=calib_images, **src_kw
            )
            ctx.info["calib_data"] = calib_cache["desc"]
        return calib_cache["x"]

    # a copy, not a view: torch.export saves its example inputs, and a view would drag the whole batch along
    example = (vimages[:2] if len(vimages) >= 2 else vimages.repeat(2, 1, 1, 1)).clone()
    ctx = ExportContext(
        ref=ref,
        example=example,
        calib=calib,
        check=vimages,
        opset=opset,
        calib_method=calib_method,
        reduce_range=reduce_range,
        int8_tries=int8_tries,
    )
    meta = make_metadata(ref, fmt, weights)

    # a hidden temporary name with the format's own suffix (torch.export warns about other names)
    fd, tmp = temp_beside(out, suffix=".tmp" + fmt.suffix)
    os.close(fd)
    try:
        log.info("exporting %s (%s) as %s ...", weights, ref.model_name, fmt.name)
        fmt.write(ctx, tmp, meta)
        exported = open_model(tmp, device="cpu", format=fmt.name)
        report = verify(ref, exported, vimages, int8=fmt.int8, ref_logits=ctx.check_logits())
        if not report["ok"]:
            raise VerificationError(
                f"{fmt.name} export of {weights} failed verification on {vdesc}: {report['reason']}; "
                f"nothing written{_int8_hint(meta)}"
            )
        result = {
            "format": fmt.name,
            "out": out,
            "weights": os.path.abspath(weights),
            "model": ref.model_name,
            "size_bytes": os.path.getsize(tmp),
            "verification": {**report, "data": vdesc},
            "note": fmt.note,
            "export": meta["export"],
            "temperature": ref.temperature,
            "tta": ref.tta,
        }
        if "desc" in calib_cache:
            result["calibration"] = calib_cache["desc"]
        if data:
            result["accuracy"] = _accuracies(ref, exported, fmt, data, split, data_root, max_eval_images)
        os.replace(tmp, out)
    except BaseException as e:
        full = disk_full_error(e, out, tmp=tmp) if isinstance(e, Exception) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from e
        raise
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _write_record(result, out)
    return result


def _write_record(result: dict, out: str) -> None:
    """OUT.json beside the export: this report (its verification numbers), which report.html's parity table
    reads. The export itself is done: a record that cannot be written is a warning, not a failed export."""
    from imgclf.core.fileio import write_json

    try:
        write_json(result, out + ".json")
    except (OSError, ImgclfError) as e:
        log.warning("could not write %s.json (the export's verification record): %s", out, e)


def _accuracies(ref, exported, fmt, data, split, data_root, max_eval_images) -> dict:
    """The accuracy of the checkpoint and of the export (and, with --tta, of the checkpoint without it)."""
    runners = [ref, exported]
    if ref.tta is not None:
        runners.append(CheckpointRunner(ref.path, device="cpu", precision="fp32", channels_last=False, ckpt=ref.ckpt))
    accs, n, where = accuracy_on(
        runners, data, split=split, data_root=data_root, config=ref.config, max_images=max_eval_images
    )
    r = {
        "data": where,
        "images": n,
        "checkpoint": accs[0],
        fmt.name: accs[1],
        "drop_points": 100.0 * (accs[0] - accs[1]),
    }
    if ref.tta is not None:
        r.update(tta=ref.tta, checkpoint_without_tta=accs[2], tta_gain_points=100.0 * (accs[1] - accs[2]))
    return r


def _int8_hint(meta: dict) -> str:
    q = meta["export"].get("quantization")
    if not q:
        return ""
    tried = ", ".join(
        f"{t['calibration']}{' with ' + str(len(t['fp32_nodes'])) + ' nodes fp32' if t['fp32_nodes'] else ''} "
        f"{t['top1_kept']}/{t['images']}"
        for t in q["tries"]
    )
    return (
        f" (int8 tries, labels kept: {tried}; calibrate on images closer to the verification data with "
        f"--calib-data, or with more --calib-images)"
    )


def _int8_lines(q: dict) -> list[str]:
    """What the int8 writer did, for people: the remedy used and the numbers of each try."""
    how = (
        "every node quantized"
        if not q["fp32_nodes"]
        else (
            f"{len(q['fp32_nodes'])} nodes kept fp32 ({', '.join(q['fp32_nodes'])}): "
            + "; ".join(r["why"] for r in q["fp32_reasons"])
        )
    )
    lines = [f"int8: {q['calibration']} calibration, {how} (try {q['chosen_try']} of {len(q['tries'])})"]
    if len(q["tries"]) > 1:
        lines.append(
            "int8 tries: "
            + "; ".join(
                f"{i}. {t['calibration']}{', ' + str(len(t['fp32_nodes'])) + ' nodes fp32' if t['fp32_nodes'] else ''}: "
                f"{t['top1_kept']}/{t['images']} labels kept, RMSE {t['rel_rmse']:.1%}"
                for i, t in enumerate(q["tries"], 1)
            )
        )
    return lines


def format_export_report(r: dict) -> str:
    v = r["verification"]
    tol = v["tolerance"]
    if "min_top1_agreement" in tol:
        numbers = (
            f"top-1 agreement {v['top1_kept']}/{v['images']} = {v['top1_agreement']:.1%} (one-sided "
            f"{tol['confidence']:.0%} upper bound {v['top1_agreement_upper']:.1%}), RMSE {v['rel_rmse']:.1%} of logit "
            f"spread (lower bound {v['rel_rmse_lower']:.1%})"
        )
        rule = (
            f"refused only if the agreement's upper bound is below {tol['min_top1_agreement']:.0%} "
            f"or the RMSE's lower bound above {tol['max_rel_rmse']:.0%}"
        )
    else:
        numbers = f"max |logit diff| {v['max_abs_diff']:.3g}, top-1 agreement {v['top1_agreement']:.1%}"
        rule = f"max |diff| <= {tol['max_abs_diff']:.3g}"
    lines = [
        f"wrote {r['out']} ({r['format']}, {human_size(r['size_bytes'])}) in {r['seconds']:.0f} s",
        f"verified against the checkpoint on {v['data']}: {numbers} ({rule}): passed",
    ]
    if r.get("calibration"):
        lines.append(f"calibrated on {r['calibration']}")
    if r.get("export", {}).get("quantization"):
        lines += _int8_lines(r["export"]["quantization"])
    if r.get("accuracy"):
        a = r["accuracy"]
        with_tta = f" with --tta {a['tta']}" if a.get("tta") else ""
        lines.append(
            f"accuracy on {a['data']} ({a['images']} images): checkpoint{with_tta} {a['checkpoint']:.4f}, "
            f"{r['format']} {a[r['format']]:.4f} ({0.0 - a['drop_points']:+.2f} points)"  # 0.0 - x: never "-0.00"
        )
        if a.get("tta"):
            lines.append(
                f"test-time augmentation {a['tta']}: checkpoint without it {a['checkpoint_without_tta']:.4f}, "
                f"{r['format']} with it {a[r['format']]:.4f} ({a['tta_gain_points']:+.2f} points)"
            )
    if r.get("temperature", 1.0) != 1.0:
        lines.append(f"temperature {r['temperature']:.4g} (from imgclf calibrate) is in the exported graph")
    if r.get("note"):
        lines.append(f"note: {r['note']}")
    return "\n".join(lines)
