"""onnx-int8: onnxruntime's static quantization of the fp32 ONNX graph (QDQ, per-channel int8 weights, uint8
activations, calibrated on real images preprocessed as the model expects), tried until one keeps the target
share of the labels, the best try written.

fp32 ONNX -> quant_pre_process (onnxruntime's basic graph optimisations: Conv+BatchNorm fusion, constant folding;
then ONNX shape inference) -> quantize_static. quant_pre_process runs without its symbolic shape inference
(`skip_symbolic_shape=True`, the option onnxruntime documents for it): that pass is for graphs with symbolic
dimensions inside (transformers' sequence lengths), while imgclf's graphs have a static input size and only a
dynamic batch, whose every shape ONNX's own shape inference finds. And it breaks on reductions whose axes are an
input since opset 18: onnxruntime's symbolic inference has handlers for ReduceSum, ReduceMean and ReduceProd only,
so a ReduceMax (what `AdaptiveMaxPool2d(1)` exports to, in smallcnn) comes out without a shape and the Reshape
after it raised TypeError (onnxruntime PR #32376). Without it, the quantized graph of every other model family was
node for node and weight for weight the same as with it.

The settings were chosen by measuring speed and accuracy (the numbers, and the CPUs they come from, are in
docs/benchmarks.md): QDQ with uint8 activations and int8 weights was faster than int8 activations (S8S8) and than
uint8 weights (U8U8); per-channel weights cost nothing in speed and are kinder to accuracy; the QOperator format
was much slower (its per-channel QLinearConv takes a reference path). onnxruntime fuses the QDQ pairs into int8 convolutions when the session is created. GELU stays fp32
(opset 20 has a Gelu op; at opset 18 it is an Erf expression whose Mul/Add nodes the quantizer would quantize one
by one).

The tries (`Tries`), each judged by `compare` against eager PyTorch on the verification images (the numbers the
verification then reports) and timed (`run_file`: images/s on one batch of 16, against the first try), at most
`ctx.int8_tries` (default 6) quantizations, stopping at the first that reaches the target: its labels kept at
least `ctx.int8_target` (default 0.99) of the verification images' (`target_labels`: 152 of 153, every label
of 99 or fewer; a multi-label model's label decisions) with the point estimates within the bar (`meets_bar`).
Meeting the bar alone (97%) is not enough: on hymenoptera's Lite0 fine-tune the first try kept 151 of 153 and
cost 1.3 points of val accuracy (docs/benchmarks.md). In order:
  1-3. everything quantized, calibrated with `ctx.calib_method` (default minmax), then the other methods
       (entropy, percentile: they clip outliers that minmax lets stretch a tensor's scale); then the
       `PLAN_VARIANTS`, other quantization options (`VARIANTS`: symmetric activations, moving-average
       ranges), none in the plan until benchmarks/int8_tries.py shows one keeping more labels than the three
       methods on real models (docs/benchmarks.md);
  4-6. the fully quantized try with the lowest RMSE, with the tensors where it loses most kept fp32, found by
       measuring (`int8_sensitivity`, on 32 calibration images): the 1, 2, then 4 tensors that added most error.
The best try is written, whether or not one reached the target, and the verification decides: passing the
refusal rule, then most labels kept, then fewest nodes kept fp32 (they cost speed; the timings themselves are too
noisy on a shared machine to choose by), then lowest RMSE. The labels kept are counted on the images that chose
the try, so they flatter it a little: the accuracy on other images (`--data`) is the honest number. A model that
reaches the target on the first try costs one quantization; one that never does, two more calibrations, one
measurement and three more quantizations. The file's metadata (`export.quantization`) records the calibration
method, the fp32 nodes and why, the target and whether it was reached, and every try's numbers: labels kept,
RMSE, images/s and the speed against the first try.

The nodes that compute only the "features" and "knn" outputs (exporting/outputs.py: the normalisation, the
product with the bank, TopK, the distance) are never quantized: the distances stay float32, comparable with the
thresholds fitted on the checkpoint's, and the bank stays as exact as in the fp32 file (stored float16 again after
quant_pre_process folded its Cast). They read the head's input as the quantized graph computes it.

`reduce_range`: weights use 7 bits. On x86 CPUs without VNNI, onnxruntime's uint8 x int8 kernels add pairs of
products in int16 (VPMADDUBSW), which saturates with 8-bit weights: a model with large weights (such as airnet's
patch-whitening stem) fully quantized with 8-bit weights lost most of its accuracy, and with 7-bit weights kept
it, at the same speed (docs/benchmarks.md). But the 7th bit is what some models' labels need (hymenoptera's
Lite0: 151 of 153 kept with 7-bit weights whatever the calibration, 152 with 8-bit). So by default
(`reduce_range` None) the tries use 7 bits, and where the calibrations miss the target on a CPU that computes
8-bit weights exactly (`core/cpu.int8_8bit_exact`: VNNI), the next try is the best calibration with 8-bit
weights (`EIGHT_BIT`); it is written only when it keeps more labels, and then the file records it
(`export.quantization.reduce_range` false) and runners refuse it on x86 CPUs without VNNI (core/onnxrt.py), with
a line that says so at export. True: 7-bit only; False: every try 8-bit.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from imgclf.core.cpu import int8_8bit_exact
from imgclf.core.fileio import temp_dir
from imgclf.core.multilabel import MULTILABEL
from imgclf.exporting.context import CALIB_METHODS, ExportContext, quiet
from imgclf.exporting.outputs import feature_nodes
from imgclf.exporting.sensitivity import fp32_regions, int8_sensitivity
from imgclf.exporting.verify import VerificationError, batched, compare
from imgclf.exporting.writers import add_onnx_metadata, bank_float16_file, onnx_fp32
from imgclf.infer.runtime import onnx_session_options

log = logging.getLogger(__name__)

SENSITIVITY_IMAGES = 32  # calibration images on which each quantized activation is compared with fp32
FP32_TENSORS = (1, 2, 4)  # the last tries: how many of the tensors measured to add most error are kept fp32
SPEED_BATCH, SPEED_RUNS = 16, 3  # each try's speed: the best of 3 timed runs of one batch of 16 images
# quantization options a try may add to the project's settings (module docstring), by name; "": none
VARIANTS: dict[str, dict] = {
    "": {},
    "symmetric": {"ActivationSymmetric": True},
    "moving-average": {"CalibMovingAverage": True},
}
EIGHT_BIT = "8-bit-weights"  # a try with quantize_static's reduce_range off (the module docstring)
VARIANTS[EIGHT_BIT] = {}
VARIANT_TEXT = {
    "symmetric": "symmetric activations",
    "moving-average": "moving-average ranges",
    EIGHT_BIT: "8-bit weights (exact on x86 only with VNNI)",
}
# the tries after the three calibration methods, before any tensor is kept fp32: (variant, method; None: the
# method that kept most labels so far)
PLAN_VARIANTS: tuple[tuple[str, str | None], ...] = ()
# what the metadata records of each try, beside its calibration method and fp32 nodes
TRY_KEYS = (
    "images",
    "top1_kept",
    "top1_agreement",
    "top1_agreement_upper",
    "rel_rmse",
    "rel_rmse_lower",
    "meets_bar",
    "ok",
)
# a multi-label model's tries record its label decisions instead of top-1 (verify.py)
MULTILABEL_TRY_KEYS = ("labels_kept", "label_decisions", "label_agreement", "label_agreement_upper", "sets_kept")


class ImageReader:
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


class Quantizer:
    """quantize_static with this project's settings (module docstring), and a try's `extra` options on top (a
    `VARIANTS` entry). Each calibration calibrates once: with onnxruntime's calibration cache
    (`calibration_cache_path`, where the installed version has it; one per method and calibration options) a
    later try with other nodes left out, or other quantization options, only quantizes again."""

    METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

    def __init__(self, pre: str, images: torch.Tensor, work: str, *, reduce_range: bool | None, keep: list[str]):
        from onnxruntime.quantization import quantize_static  # noqa: PLC0415 - heavy; only int8 export needs it

        self.pre, self.images, self.work = pre, images, work
        self.reduce_range = reduce_range is not False  # None: 7-bit, unless a try asks for 8
        self.keep = list(keep)  # always fp32: the nodes of the features and kNN outputs (outputs.feature_nodes)
        self.cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
        self.made = 0

    def __call__(self, method: str, exclude: list[str], extra: dict | None = None, *, eight_bit: bool = False) -> str:
        from onnxruntime.quantization import (  # noqa: PLC0415 - heavy; only int8 export needs it
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        self.made += 1
        extra = dict(extra or {})
        out = os.path.join(self.work, f"try{self.made}.onnx")
        calib = "-".join(f"{k}={v}" for k, v in sorted(extra.items()) if k.startswith("Calib"))  # the ranges' own
        cache = os.path.join(self.work, f"ranges-{method}{'-' + calib if calib else ''}.json")
        kw = {"calibration_cache_path": cache} if self.cache else {}
        with quiet():
            quantize_static(
                self.pre,
                out,
                ImageReader(self.images, "input"),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=self.reduce_range and not eight_bit,
                calibrate_method=getattr(CalibrationMethod, self.METHODS[method]),
                nodes_to_exclude=list(dict.fromkeys([*self.keep, *exclude])),
                extra_options={"CalibStridedMinMax": 1, **extra},  # one batch at a time (see ImageReader)
                **kw,
            )
        return out


def run_file(path: str, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A candidate ONNX file (no imgclf metadata yet, so not an OnnxRunner): its logits on `x`, and its speed in
    images/s on one batch of `SPEED_BATCH` of them, the best of `SPEED_RUNS` runs after one untimed run. A rough,
    cheap number, meant to compare the tries of one export with each other on one machine."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy; only the ONNX formats need it

    sess = ort.InferenceSession(path, onnx_session_options(), providers=["CPUExecutionProvider"])
    logits = batched(lambda b: torch.from_numpy(sess.run(None, {"input": b.numpy()})[0]).float(), x, 32)
    batch = x[:SPEED_BATCH].repeat(math.ceil(SPEED_BATCH / max(len(x), 1)), 1, 1, 1)[:SPEED_BATCH].numpy()
    sess.run(None, {"input": batch})
    best = math.inf
    for _ in range(SPEED_RUNS):
        t0 = time.perf_counter()
        sess.run(None, {"input": batch})
        best = min(best, time.perf_counter() - t0)
    return logits, len(batch) / max(best, 1e-9)


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.01 else f"{x:.1%}"


def target_labels(target: float, total: int) -> int:
    """The labels an int8 file must keep, of `total`, to reach an agreement of `target`: ceil(target x total)
    (0.99 of 153 images: 152, one may flip; of 99 or fewer: all of them)."""
    return min(total, math.ceil(target * total - 1e-9))


@dataclass
class Tries:
    """The quantizations made so far (module docstring), each judged against the reference's logits `want` on
    the verification images and timed."""

    ctx: ExportContext
    quantize: Quantizer
    want: torch.Tensor
    made: list[dict] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)  # int8_sensitivity's rows, where it was measured
    base: dict | None = None  # the try it was measured on

    def more(self) -> bool:
        return len(self.made) < self.ctx.int8_tries and not any(t["reached_target"] for t in self.made)

    def attempt(self, method: str, regions: list[dict], variant: str = "") -> None:
        """One quantization with `method` and the `VARIANTS[variant]` options, the nodes of `regions`
        (fp32_regions rows) left out; judged and timed."""
        nodes = list(dict.fromkeys(n for x in regions for n in x["nodes"]))
        try:
            file = self.quantize(method, nodes, VARIANTS[variant], eight_bit=variant == EIGHT_BIT)
        except ValueError as e:  # onnxruntime's calibrators on some graphs (percentile: "Too many bins ...")
            self._failed(method, variant, nodes, regions, e)
            return
        logits, speed = run_file(file, self.ctx.check)
        r = {
            "top1_kept": 0,
            "top1_agreement": 0.0,
            "rel_rmse": math.inf,
            "meets_bar": False,
            **compare(self.want, logits, int8=True, thresholds=self.thresholds()),
        }  # defaults: a wrong output shape
        keys = TRY_KEYS + (MULTILABEL_TRY_KEYS if self.thresholds() is not None else ())
        t = self._try(method, variant, nodes, regions)
        t.update({k: r.get(k) for k in keys}, images_per_s=round(speed, 1), file=file)
        first = next((x["images_per_s"] for x in self.made if x["images_per_s"]), None)
        t["speed_vs_first"] = round(speed / first, 3) if first else 1.0
        t["reached_target"] = bool(t["meets_bar"]) and _kept(t) >= target_labels(self.ctx.int8_target, _total(t))
        self.made.append(t)
        log.info(
            "int8 try %d: %s: %s agreement %d/%d, RMSE %.1f%% of logit spread, %.2fx the first try's speed",
            len(self.made),
            _describe(t),
            "top-1" if self.thresholds() is None else "per-label",
            _kept(t),
            _total(t),
            100 * t["rel_rmse"],
            t["speed_vs_first"],
        )

    def _failed(self, method: str, variant: str, nodes: list[str], regions: list[dict], e: Exception) -> None:
        """A try onnxruntime could not make: recorded with why (it keeps no label), and the tries go on."""
        t = self._try(method, variant, nodes, regions)
        t.update({k: None for k in TRY_KEYS}, top1_kept=0, rel_rmse=math.inf, meets_bar=False, ok=False)
        t.update(images=len(self.want), reached_target=False, images_per_s=None, speed_vs_first=None, file=None)
        t["failed"] = f"{type(e).__name__}: {e}"
        if self.thresholds() is not None:
            t.update(labels_kept=0, label_decisions=int(self.want.numel()))
        self.made.append(t)
        log.warning("int8 try %d: %s: onnxruntime could not quantize (%s)", len(self.made), _describe(t), t["failed"])

    def _try(self, method: str, variant: str, nodes: list[str], regions: list[dict]) -> dict:
        """A try's description: what it quantized how, with which weights."""
        bits = 8 if variant == EIGHT_BIT or self.ctx.reduce_range is False else 7
        return {
            "calibration": method,
            "variant": variant,
            "weight_bits": bits,
            "fp32_nodes": nodes,
            "fp32_tensors": [x["tensor"] for x in regions],
        }

    def thresholds(self) -> list[float] | None:
        """A multi-label model's thresholds (its label decisions are compared), else None (top-1)."""
        ref = self.ctx.ref
        return ref.thresholds if ref.task == MULTILABEL else None

    def calibrations(self) -> None:
        """Everything quantized: `ctx.calib_method` first, then the other methods, then `PLAN_VARIANTS` on the
        method that kept most labels."""
        for method in [self.ctx.calib_method] + [m for m in CALIB_METHODS if m != self.ctx.calib_method]:
            if self.made and not self.more():
                return
            self.attempt(method, [])
        for variant, method in PLAN_VARIANTS:
            if not self.more():
                return
            self.attempt(method or self.best()["calibration"], [], variant)
        if self.ctx.reduce_range is None and int8_8bit_exact() and self.more() and any(t["file"] for t in self.made):
            self.attempt(self.best()["calibration"], [], EIGHT_BIT)

    def fp32_tensors(self) -> None:
        """Then the fully quantized try with the lowest RMSE, with the tensors measured to add most error kept
        fp32: the 1, 2, then 4 worst. With 7-bit weights, unless the 8-bit try kept more labels than every 7-bit
        one (a label or two more with some nodes in fp32 is not worth a file that needs VNNI)."""
        if not self.more() or not any(t["file"] for t in self.made):
            return
        self.base = min(self._bases(), key=lambda t: t["rel_rmse"])
        q = self.quantize
        self.ranking = int8_sensitivity(q.pre, self.base["file"], q.images[:SENSITIVITY_IMAGES], q.work)
        regions = fp32_regions(self.ranking)
        done = 0
        for k in FP32_TENSORS:
            k = min(k, len(regions))
            if k <= done or not self.more():
                break
            self.attempt(self.base["calibration"], regions[:k], self.base["variant"])
            done = k

    def _bases(self) -> list[dict]:
        """The fully quantized tries the fp32 tries may start from (fp32_tensors)."""
        full = [t for t in self.made if not t["fp32_nodes"] and t["file"]]
        sevens = [t for t in full if t["weight_bits"] == 7]
        eights = [t for t in full if t["weight_bits"] == 8]
        if sevens and eights and max(map(_kept, eights)) > max(map(_kept, sevens)):
            return eights
        return sevens or eights

    def best(self) -> dict:
        """The best try: passing the refusal rule, then most labels kept, then 7-bit weights (they run right on
        every CPU), then fewest nodes kept fp32 (they cost speed; the timings themselves are too noisy to choose
        by), then lowest RMSE."""
        made = [t for t in self.made if t["file"]]
        if not made:
            raise VerificationError(f"onnxruntime could not quantize the model: {self.made[-1]['failed']}")
        return max(made, key=lambda t: (t["ok"], _kept(t), -t["weight_bits"], -len(t["fp32_nodes"]), -t["rel_rmse"]))

    def record(self, best: dict) -> dict:
        """What the metadata says of the quantization (`export.quantization`)."""
        images, why = len(self.quantize.images), {r["tensor"]: r for r in self.ranking}
        measured_on = min(images, SENSITIVITY_IMAGES)
        reached = [t for t in self.made if t["reached_target"]]
        return {
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "weights": f"int8 per-channel, {best['weight_bits']}-bit range",
            "activations": "uint8 per-tensor",
            "reduce_range": best["weight_bits"] == 7,  # false: exact on x86 only with VNNI (core/onnxrt refuses)
            "calibration": best["calibration"],
            "variant": best["variant"],
            "options": VARIANTS[best["variant"]],
            "calibration_images": int(images),
            "calibration_data": self.ctx.info.get("calib_data"),
            "plan": "measured-fp32" if best["fp32_nodes"] else "all-int8",
            "fp32_output_nodes": self.quantize.keep,  # the features and kNN outputs' nodes, never quantized
            "fp32_nodes": best["fp32_nodes"],
            "fp32_reasons": [_reason(t, why[t], measured_on) for t in best["fp32_tensors"]],
            "target": {
                "agreement": self.ctx.int8_target,
                "labels": target_labels(self.ctx.int8_target, _total(best)),
                "of": _total(best),
                "reached": bool(reached),
                "stopped": "target reached" if reached else "tries ran out",
            },
            "speed": {
                "batch": SPEED_BATCH,
                "runs": SPEED_RUNS,
                "of": "each try against try 1 (onnxruntime, one machine)",
            },
            "tries": [{k: v for k, v in t.items() if k != "file"} for t in self.made],
            "chosen_try": self.made.index(best) + 1,
            "sensitivity": {
                "images": measured_on,
                "measured_on_try": self.made.index(self.base) + 1,
                "top": [{k: r[k] for k in ("tensor", "error", "error_above", "added")} for r in self.ranking[:8]],
            }
            if self.ranking
            else None,
        }


def _reason(tensor: str, r: dict, images: int) -> dict:
    """Why `tensor` (an int8_sensitivity row `r`) is kept fp32, for the metadata."""
    return {
        "tensor": tensor,
        "nodes": r["nodes"],
        "error_int8": r["error"],
        "error_above": r["error_above"],
        "why": f"quantizing {tensor} raised the mean per-channel relative error from {_pct(r['error_above'])} "
        f"(the tensors it is computed from) to {_pct(r['error'])} on {images} calibration images",
    }


def _kept(t: dict) -> int:
    """A try's labels kept: a multi-label model's label decisions, else top-1."""
    return t["labels_kept"] if t.get("labels_kept") is not None else t["top1_kept"]


def _total(t: dict) -> int:
    """The labels a try is judged on: a multi-label model's label decisions, else the images."""
    return t["label_decisions"] if t.get("label_decisions") is not None else t["images"]


def _describe(t: dict) -> str:
    """A try for people: 'minmax', 'percentile, symmetric activations, 12 nodes fp32'."""
    parts = [t["calibration"]] + ([VARIANT_TEXT[t["variant"]]] if t["variant"] else [])
    return ", ".join(parts + ([f"{len(t['fp32_nodes'])} nodes fp32"] if t["fp32_nodes"] else []))


def write_onnx_int8(ctx: ExportContext, path: str, meta: dict) -> None:
    """The onnx-int8 writer: the tries of the module docstring, the best written to `path` with its record."""
    import onnx  # noqa: PLC0415 - heavy; only the ONNX formats need it
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415 - heavy; int8 only

    images = ctx.calib()
    want = ctx.check_logits()
    work = temp_dir("imgclf-int8-")  # removed below; one left by a killed export goes at the next int8 export
    try:
        fp32, pre = os.path.join(work, "fp32.onnx"), os.path.join(work, "pre.onnx")
        onnx_fp32(ctx, fp32)
        with quiet():
            quant_pre_process(fp32, pre, skip_symbolic_shape=True)  # why: the module docstring
        keep = feature_nodes(onnx.load(pre))
        tries = Tries(ctx, Quantizer(pre, images, work, reduce_range=ctx.reduce_range, keep=keep), want)
        tries.calibrations()
        tries.fp32_tensors()
        best = tries.best()
        if best["weight_bits"] == 8 and ctx.reduce_range is None:
            sevens = [t for t in tries.made if t["file"] and t["weight_bits"] == 7]
            log.warning(
                "int8: 8-bit weights written (%d labels kept, against %d with 7-bit weights): exact on x86 CPUs "
                "only with VNNI (AVX512-VNNI or AVX-VNNI), which imgclf's runners check; --reduce-range keeps 7-bit "
                "weights, for every CPU",
                _kept(best),
                max(map(_kept, sevens), default=0),
            )
        shutil.copyfile(best["file"], path)
        bank_float16_file(path)  # quant_pre_process folded the bank's Cast: float16 again
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["export"].update(exporter=ctx.info["exporter"], opset=ctx.opset, quantization=tries.record(best))
    add_onnx_metadata(path, meta)
