"""Export a checkpoint to deployment formats; every file is checked against eager PyTorch before it exists.

One table of formats (`FORMATS`, after Ultralytics' `export_formats`): name, default suffix, the packages it
needs, whether it is int8 (which decides its verification rule), and the function that writes it.

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
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable

import numpy as np
import torch

from . import __version__
from .errors import DataError, ImgclfError, UsageError, did_you_mean
from .fileio import temp_beside
from .runtime import (
    DYNAMIC_INT8_FORMAT, META_KEY, META_NAME, CheckpointRunner, Runner, open_model, quantize_linear_dynamic,
)

log = logging.getLogger("imgclf")

# 20: the first opset with a Gelu op (onnxruntime >= 1.17 runs it). At 18, GELU is exported as an Erf expression
# whose Mul/Add nodes the int8 quantizer quantizes one by one (airnet_small on CIFAR-10: 80% instead of 87.6%).
DEFAULT_OPSET = 20
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension in torch.export / ONNX
DEFAULT_CALIB_IMAGES = 256
DEFAULT_VERIFY_IMAGES = 500  # all of a typical validation split (hymenoptera: 153); the int8 rule's bound tightens with n
FP32_REL_TOL = 1e-3
INT8_MIN_AGREEMENT = 0.97
INT8_MAX_REL_RMSE = 0.30
INT8_CONFIDENCE = 0.95  # one-sided: a file at the bar is refused at most ~5% of the time (see the module docstring)


class VerificationError(ImgclfError):
    """An exported file that does not compute what the checkpoint computes. Exit code 1; nothing is written."""


@dataclass
class ExportContext:
    ref: CheckpointRunner  # the checkpoint, eager fp32, NCHW, on the cpu
    example: torch.Tensor  # 2 real preprocessed images: the example input for tracing / torch.export
    calib: Callable[[], torch.Tensor]  # real preprocessed images for int8 calibration (loaded on first call)
    opset: int = DEFAULT_OPSET
    calib_method: str = "minmax"
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in AVX2's u8 x s8 multiply-add (see write_onnx_int8)
    info: dict = field(default_factory=dict)  # what the writer did (exporter, opset, quantization): into the metadata

    @property
    def model(self) -> torch.nn.Module:
        return self.ref.model


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # default file name: <checkpoint stem><suffix>, next to the checkpoint
    description: str
    write: Callable[[ExportContext, str, dict], None]  # (context, path, metadata) -> writes the file at path
    packages: tuple = ()  # (import name, pip name)
    int8: bool = False
    note: str = ""


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
            torch.onnx.export(ep, (ctx.example,), path, dynamo=True, opset_version=ctx.opset, external_data=False,
                              input_names=["input"], output_names=["logits"], verbose=False)
        exporter = "dynamo"
    except Exception as e:  # noqa: BLE001 - any failure of the new path: try the old one, say so
        log.warning("dynamo ONNX exporter failed (%s); using the TorchScript-based exporter",
                    str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
        with _quiet(), torch.no_grad():
            torch.onnx.export(ctx.model, (ctx.example,), path, dynamo=False, opset_version=ctx.opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
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
        self.batches = [{input_name: images[i:i + batch].numpy()} for i in range(0, len(images), batch)]
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


def stem_convs(model) -> list[str]:
    """Names of the Conv/Gemm nodes that see the input image first: reached from a graph input through
    data-movement ops only (airnet's test-time augmentation makes six copies of its stem)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out, seen, stack = [], set(), [i.name for i in model.graph.input]
    while stack:
        for n in consumers.get(stack.pop(), []):
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type in ("Conv", "Gemm", "MatMul"):
                out.append(n.name)
            else:
                stack += list(n.output)
    return out


def write_onnx_int8(ctx: ExportContext, path: str, meta: dict) -> None:
    """fp32 ONNX -> quant_pre_process (symbolic shape inference, onnxruntime's basic graph optimisations:
    Conv+BatchNorm fusion, constant folding) -> quantize_static.

    Settings measured on this project's 2-core AVX2 CPU without VNNI (ResNet-18, 224 px, batch 32):
    QDQ with uint8 activations and int8 weights ran ~1.3x faster than int8 activations (S8S8) and ~1.4x faster
    than uint8 weights (U8U8); per-channel weights cost nothing in speed there and are kinder to accuracy; the
    QOperator format was 2x slower per-tensor and 25x slower per-channel (its per-channel QLinearConv takes
    a reference path). onnxruntime fuses the QDQ pairs into int8 convolutions when the session is created.

    Two plans, the first that keeps the calibration images' predictions (the int8 rule of `compare`, against
    eager PyTorch) wins: everything quantized; else the stem convolution(s), which see the raw image, kept in
    fp32. GELU stays fp32 either way (opset 20 has a Gelu op; at opset 18 it is an Erf expression whose Mul/Add
    nodes the quantizer would quantize one by one).

    `reduce_range` (default on): weights use 7 bits. On x86 CPUs without VNNI (this one), onnxruntime's
    uint8 x int8 kernels add pairs of products in int16 (VPMADDUBSW), which saturates with 8-bit weights.
    Measured here with 8-bit weights: airnet_small fully quantized fell from 86.9% to 40.1% on 2,000 CIFAR-10
    test images (its patch-whitening stem has large weights), and kept 87.6% of 87.7% on 1,000 with the stem
    in fp32; EfficientNet-Lite0 on hymenoptera lost 2 of 153 val images. With 7-bit weights: airnet_small fully
    quantized keeps 87.88% of 87.92% on all 10,000 test images, Lite0 loses 1 image (logit RMSE 13% -> 7-9%
    of their spread), at the same speed."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    images = ctx.calib()
    check = images[:64]
    with torch.no_grad():
        want = _batched(ctx.ref.logits, check, 32)
    work = tempfile.mkdtemp(prefix="imgclf-int8-")
    try:
        fp32, pre = os.path.join(work, "fp32.onnx"), os.path.join(work, "pre.onnx")
        _onnx_fp32(ctx, fp32)
        with _quiet():
            quant_pre_process(fp32, pre)
        plans = [("all", []), ("stem-fp32", stem_convs(onnx.load(pre)))]
        tried = []
        for plan, keep_fp32 in plans:
            candidate = os.path.join(work, f"{plan}.onnx")
            with _quiet():
                quantize_static(pre, candidate, _ImageReader(images, "input"), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                reduce_range=ctx.reduce_range, calibrate_method=methods[ctx.calib_method],
                                nodes_to_exclude=keep_fp32,
                                extra_options={"CalibStridedMinMax": 1})  # one batch at a time (see _ImageReader)
            r = compare(want, _onnx_logits(candidate, check), int8=True)
            tried.append({"plan": plan, "fp32_nodes": keep_fp32, "top1_agreement": r["top1_agreement"],
                          "rel_rmse": r["rel_rmse"], "ok": r["ok"], "file": candidate})
            log.info("int8 plan %s: top-1 agreement %.3f, RMSE %.1f%% of logit spread on %d calibration images",
                     plan, r["top1_agreement"], 100 * r["rel_rmse"], len(check))
            if r["ok"]:
                break
        best = next((t for t in tried if t["ok"]), max(tried, key=lambda t: (t["top1_agreement"], -t["rel_rmse"])))
        shutil.copyfile(best["file"], path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["export"].update(exporter=ctx.info["exporter"], opset=ctx.opset, quantization={
        "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per-channel",
        "activations": "uint8 per-tensor", "reduce_range": ctx.reduce_range, "calibration": ctx.calib_method,
        "calibration_images": int(len(images)), "calibration_data": ctx.info.get("calib_data"),
        "plan": best["plan"], "fp32_nodes": best["fp32_nodes"],
        "plans_tried": [{k: v for k, v in t.items() if k != "file"} for t in tried]})
    _add_onnx_metadata(path, meta)


def _onnx_logits(path: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of a candidate ONNX file that has no imgclf metadata yet (so not an OnnxRunner)."""
    import onnxruntime as ort

    from .runtime import onnx_session_options

    sess = ort.InferenceSession(path, onnx_session_options(), providers=["CPUExecutionProvider"])
    return _batched(lambda b: torch.from_numpy(sess.run(None, {"input": b.numpy()})[0]).float(), x, 32)


def write_dynamic_int8(ctx: ExportContext, path: str, meta: dict) -> None:
    from .checkpoint import model_from_checkpoint

    model = model_from_checkpoint(ctx.ref.ckpt, "cpu", channels_last=False)  # a fresh copy to quantize
    q = quantize_linear_dynamic(model)
    blob = {"format": DYNAMIC_INT8_FORMAT, "version": 1, "meta": json.loads(_meta_json(meta)),
            "state_dict": q.state_dict()}
    torch.save(blob, path)  # plain data, quantized tensors and dtypes: loads with weights_only=True


_ONNX = (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"))

FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("torchscript", ".ts", "TorchScript (torch.jit.trace + freeze): the seed's format", write_torchscript,
           note="torch.jit is deprecated in current PyTorch; prefer pt2 for new deployments"),
    Format("pt2", ".pt2", "torch.export program (ATen graph), the modern replacement for TorchScript", write_pt2),
    Format("onnx", ".onnx", f"ONNX, fp32, opset {DEFAULT_OPSET}, dynamic batch (dynamo exporter)", write_onnx,
           packages=_ONNX),
    Format("onnx-int8", ".int8.onnx", "ONNX int8: onnxruntime static quantization calibrated on real images",
           write_onnx_int8, packages=_ONNX, int8=True),
    Format("dynamic-int8", ".dynamic-int8.pt", "the seed's quantize_dynamic: int8 weights for nn.Linear only",
           write_dynamic_int8, int8=True,
           note="only Linear layers are quantized: a CNN is almost all convolutions, so this speeds it up very little"),
]}


def get_format(name: str) -> Format:
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


def sample_images(data: str, prep, *, split: str, n: int, data_root: str | None = None, val_fraction: float = 0.2,
                  seed: int = 0, workers: int = 4) -> tuple[torch.Tensor, str]:
    """Up to `n` real images of `split` of `data` (a seeded random choice), preprocessed as the model expects
    (the same decode and eval transform as evaluate and predict); N x 3 x S x S float32 and a description.

    `data` may also be a plain folder of images (no class folders), for calibration on unlabelled photos."""
    from .data.images import UnreadableImage
    from .data.pipeline import decode_one, eval_transform
    from .data.sources import Split, open_source

    try:
        src = open_source(data, data_root=data_root, val_fraction=val_fraction, seed=seed)
        s = src.split(split)
        where = f"{os.path.basename(str(data).rstrip('/')) or data} {s.name}"
    except DataError:
        from .predict import expand_paths

        if not os.path.isdir(str(data)):
            raise
        paths = expand_paths([data])
        s = Split(name="images", labels=[0] * len(paths), paths=paths)
        where = f"{data} (folder of images)"
    order = np.random.default_rng(seed).permutation(len(s))
    tf = eval_transform(prep)

    def load(i):
        try:
            return tf(decode_one(s, int(i), prep.resize))
        except UnreadableImage:
            return None

    out: list[torch.Tensor] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(order), max(n, 1)):
            out += [t for t in pool.map(load, order[start:start + n - len(out)]) if t is not None]
            if len(out) >= n:
                break
    if not out:
        raise DataError(f"no readable images in {where}: pass --calib-data with a folder of images")
    return torch.stack(out[:n]), f"{len(out[:n])} images of {where}"


# --------------------------------------------------------------------------------------------- verification


def tolerance(int8: bool, ref: torch.Tensor) -> dict:
    if int8:
        return {"min_top1_agreement": INT8_MIN_AGREEMENT, "max_rel_rmse": INT8_MAX_REL_RMSE, "confidence": INT8_CONFIDENCE}
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
    return torch.cat([logits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


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
    r = {"images": n, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
         "top1_agreement": agree, "top1_kept": kept, "rel_rmse": rel_rmse, "logit_scale": float(ref.abs().max()),
         "tolerance": tol}
    if not torch.isfinite(out).all():
        r.update(ok=False, meets_bar=False, reason="non-finite logits")
    elif int8:
        upper = agreement_upper_bound(kept, n, tol["confidence"])
        lower = rmse_lower_bound(per_image, tol["confidence"]) / spread
        r.update(top1_agreement_upper=upper, rel_rmse_lower=lower,
                 meets_bar=agree >= tol["min_top1_agreement"] and rel_rmse <= tol["max_rel_rmse"])
        why = []
        if upper < tol["min_top1_agreement"]:
            why.append(f"top-1 agreement {kept}/{n} = {agree:.1%}, whose one-sided {tol['confidence']:.0%} upper bound "
                       f"{upper:.1%} is below {tol['min_top1_agreement']:.0%}")
        if lower > tol["max_rel_rmse"]:
            why.append(f"logit RMSE {rel_rmse:.1%} of the logits' spread, whose one-sided {tol['confidence']:.0%} "
                       f"lower bound {lower:.1%} is above {tol['max_rel_rmse']:.0%}")
        r.update(ok=not why, reason="; ".join(why))
    else:
        ok = r["max_abs_diff"] <= tol["max_abs_diff"]
        r.update(ok=ok, reason="" if ok else
                 f"max |logit difference| {r['max_abs_diff']:.3g} > {tol['max_abs_diff']:.3g} (top-1 agreement {agree:.3f})")
    return r


def verify(ref: Runner, exported: Runner, images: torch.Tensor, *, int8: bool, batch_size: int = 32) -> dict:
    """Run both on `images` (in batches, then the first image alone) and compare; see the module docstring."""
    r_ref = _batched(ref.logits, images, batch_size)
    r_out = _batched(exported.logits, images, batch_size)
    report = compare(r_ref, r_out, int8=int8)
    if report["ok"]:
        single = exported.logits(images[:1])
        if single.shape != r_ref[:1].shape or (single - r_out[:1]).abs().max() > max(1e-3, 1e-3 * report["logit_scale"]) * (50 if int8 else 1):
            report.update(ok=False, reason="a batch of one image gives other logits than the same image in a batch "
                                           "(the batch dimension is not really dynamic)")
    return report


# --------------------------------------------------------------------------------------------- accuracy


def accuracy_on(runners: list[Runner], data: str, *, split: str, data_root=None, config: dict | None = None,
                batch_size: int = 64, cache: str = "auto", max_images: int | None = None) -> tuple[list[float], int, str]:
    """Top-1 accuracy of each runner on the same decoded images of `split` (they share one preprocessing)."""
    from .data.feed import make_feed
    from .data.pipeline import default_workers
    from .data.sources import open_source
    from .evaluation import align_classes, infer

    cfg = config or {}
    src = open_source(data, data_root=data_root or cfg.get("data_root"), val_fraction=cfg.get("val_fraction", 0.2),
                      seed=cfg.get("seed", 0))
    s = src.split(split)
    if max_images is not None and len(s) > max_images:
        s = s.subset(np.random.default_rng(0).permutation(len(s))[:max_images].tolist())
    mapping = torch.as_tensor(align_classes(src.classes, runners[0].classes, data), dtype=torch.long)
    feed, bad = make_feed(s, runners[0].preprocess, cache=cache, workers=default_workers(), eval_batch_size=batch_size,
                          desc=f"decode {split}")
    for path, reason in bad:
        log.warning("left out %s: %s", path, reason)
    accs = []
    for r in runners:
        logits, labels = infer(r, feed.batches(), desc=f"{r.format} {split}")
        accs.append(float((logits.argmax(1) == mapping[labels]).float().mean()) if len(labels) else float("nan"))
    return accs, len(feed), f"{src.location} {split}"


# --------------------------------------------------------------------------------------------- export


def default_out(weights: str, fmt: Format) -> str:
    stem, _ = os.path.splitext(os.path.abspath(weights))
    return stem + fmt.suffix


def make_metadata(ref: CheckpointRunner, fmt: Format, weights: str) -> dict:
    ckpt = ref.ckpt
    return {
        "imgclf_export": 1, "format": fmt.name, "model": ref.model_name, "num_classes": len(ref.classes),
        "classes": list(ref.classes), "preprocess": ref.preprocess.to_dict(), "config": dict(ref.config),
        "input": {"name": "input", "shape": ["batch", 3, ref.preprocess.img_size, ref.preprocess.img_size],
                  "dtype": "float32", "layout": "NCHW, RGB, normalised with preprocess.mean/std"},
        "output": {"name": "logits", "shape": ["batch", len(ref.classes)]},
        "source": {"checkpoint": os.path.abspath(weights), "epoch": ckpt.get("epoch"),
                   "metrics": {k: v for k, v in (ckpt.get("metrics") or {}).items() if isinstance(v, (int, float, str))},
                   "data_fingerprint": ckpt.get("data_fingerprint")},
        "export": {"imgclf_version": __version__, "torch_version": str(torch.__version__),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def export(weights: str, format: str, *, out: str | None = None, calib_data: str | None = None,
           calib_images: int = DEFAULT_CALIB_IMAGES, calib_method: str = "minmax", reduce_range: bool = True,
           verify_data: str | None = None, verify_images: int = DEFAULT_VERIFY_IMAGES, data: str | None = None,
           split: str = "val", data_root: str | None = None, opset: int = DEFAULT_OPSET,
           max_eval_images: int | None = None) -> dict:
    """Export checkpoint `weights` as `format`, verify it against eager PyTorch, and only then write `out`.

    Calibration images (int8): `calib_data` (a data source or a folder of images), default the training split
    of the data the checkpoint records. Verification images: the validation split of `verify_data`, default
    the recorded data (or the calibration data when the checkpoint records none). With `data`, the accuracy
    of the checkpoint and of the export on its `split`. Returns a report dict (also what `--json` prints)."""
    fmt = get_format(format)
    if calib_method not in ("minmax", "entropy", "percentile"):
        raise UsageError(f"--calib-method '{calib_method}': use minmax, entropy or percentile{did_you_mean(calib_method, ['minmax', 'entropy', 'percentile'])}")
    for name, v in (("--calib-images", calib_images), ("--verify-images", verify_images)):
        if v < 1:
            raise UsageError(f"{name} must be at least 1, got {v}")
    runner = open_model(weights, device="cpu", precision="fp32")
    if not isinstance(runner, CheckpointRunner):
        raise UsageError(f"'{weights}' is already an exported model ({runner.format}): export from the checkpoint it came from")
    ref = CheckpointRunner(weights, device="cpu", precision="fp32", channels_last=False, ckpt=runner.ckpt)
    del runner
    out = os.path.abspath(out or default_out(weights, fmt))
    if os.path.isdir(out):
        raise UsageError(f"--out '{out}' is a folder: give a file name such as {os.path.join(out, 'model' + fmt.suffix)}")
    if os.path.abspath(out) == os.path.abspath(weights):
        raise UsageError(f"--out '{out}' is the checkpoint itself: choose another file name")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    cfg = ref.config
    recorded = cfg.get("data")
    src_kw = dict(data_root=data_root or cfg.get("data_root"), val_fraction=cfg.get("val_fraction", 0.2),
                  seed=cfg.get("seed", 0))
    vdata = verify_data or recorded or calib_data
    if not vdata:
        raise DataError("the checkpoint records no data to verify the export on: pass --verify-data (or --calib-data) with images")
    t0 = time.perf_counter()
    vimages, vdesc = sample_images(vdata, ref.preprocess, split="val", n=verify_images, **src_kw)
    cdata = calib_data or recorded or vdata
    calib_cache: dict = {}

    def calib() -> torch.Tensor:
        if "x" not in calib_cache:
            calib_cache["x"], calib_cache["desc"] = sample_images(cdata, ref.preprocess, split="train", n=calib_images, **src_kw)
            ctx.info["calib_data"] = calib_cache["desc"]
        return calib_cache["x"]

    # a copy, not a view: torch.export saves its example inputs, and a view would drag the whole batch along
    example = (vimages[:2] if len(vimages) >= 2 else vimages.repeat(2, 1, 1, 1)).clone()
    ctx = ExportContext(ref=ref, example=example, calib=calib,
                        opset=opset, calib_method=calib_method, reduce_range=reduce_range)
    meta = make_metadata(ref, fmt, weights)

    # a hidden temporary name with the format's own suffix (torch.export warns about other names)
    fd, tmp = temp_beside(out, suffix=".tmp" + fmt.suffix)
    os.close(fd)
    try:
        log.info("exporting %s (%s) as %s ...", weights, ref.model_name, fmt.name)
        fmt.write(ctx, tmp, meta)
        exported = open_model(tmp, device="cpu", format=fmt.name)
        report = verify(ref, exported, vimages, int8=fmt.int8)
        if not report["ok"]:
            raise VerificationError(f"{fmt.name} export of {weights} failed verification on {vdesc}: {report['reason']}; "
                                    f"nothing written" + (" (try --calib-method entropy or more --calib-images)" if fmt.name == "onnx-int8" else ""))
        result = {"format": fmt.name, "out": out, "weights": os.path.abspath(weights), "model": ref.model_name,
                  "size_bytes": os.path.getsize(tmp), "verification": {**report, "data": vdesc}, "note": fmt.note,
                  "export": meta["export"]}
        if "desc" in calib_cache:
            result["calibration"] = calib_cache["desc"]
        if data:
            accs, n, where = accuracy_on([ref, exported], data, split=split, data_root=data_root, config=cfg,
                                         max_images=max_eval_images)
            result["accuracy"] = {"data": where, "images": n, "checkpoint": accs[0], fmt.name: accs[1],
                                  "drop_points": 100.0 * (accs[0] - accs[1])}
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def format_report(r: dict) -> str:
    v = r["verification"]
    tol = v["tolerance"]
    if "min_top1_agreement" in tol:
        numbers = (f"top-1 agreement {v['top1_kept']}/{v['images']} = {v['top1_agreement']:.1%} (one-sided "
                   f"{tol['confidence']:.0%} upper bound {v['top1_agreement_upper']:.1%}), RMSE {v['rel_rmse']:.1%} of logit "
                   f"spread (lower bound {v['rel_rmse_lower']:.1%})")
        rule = (f"refused only if the agreement's upper bound is below {tol['min_top1_agreement']:.0%} "
                f"or the RMSE's lower bound above {tol['max_rel_rmse']:.0%}")
    else:
        numbers = f"max |logit diff| {v['max_abs_diff']:.3g}, top-1 agreement {v['top1_agreement']:.1%}"
        rule = f"max |diff| <= {tol['max_abs_diff']:.3g}"
    lines = [f"wrote {r['out']} ({r['format']}, {r['size_bytes'] / 2**20:.1f} MiB) in {r['seconds']:.0f} s",
             f"verified against the checkpoint on {v['data']}: {numbers} ({rule}): passed"]
    if r.get("calibration"):
        lines.append(f"calibrated on {r['calibration']}")
    if r.get("accuracy"):
        a = r["accuracy"]
        lines.append(f"accuracy on {a['data']} ({a['images']} images): checkpoint {a['checkpoint']:.4f}, "
                     f"{r['format']} {a[r['format']]:.4f} ({-a['drop_points']:+.2f} points)")
    if r.get("note"):
        lines.append(f"note: {r['note']}")
    return "\n".join(lines)
