"""Parity of an exported file with its checkpoint, and the real images it is judged on.

The export and the checkpoint (eager fp32, NCHW) run on the same real images, as a batch and one image alone (the
batch dimension must really be dynamic): by default all of the validation split (the checkpoint's recorded data,
or `verify_data`) up to 500 images, so hymenoptera's 153 val images all count. Rules, defended in `tolerance` and
`compare`:
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
  images 62 kept (96.9%, which the old point rule refused on one CPU: docs/benchmarks.md) passes, refusal
  starts at 5 lost; on 153 images at 9 lost (94.1%); on 500 at 22 lost (95.6%). A truly bad file is still
  refused: 80% agreement from 18 images on. The RMSE rule is the same kind of test; it was already stable (a
  mean over every logit of every image, far below 30% for a good export: docs/benchmarks.md), and the bound
  keeps it so at small n.
- multi-label models (the checkpoint's task is `multilabel`: a sigmoid per label, its label set by the stored
  thresholds): the fp32 rule is the same (logits); instead of top-1 agreement, each label's decision at its
  stored threshold is compared (`labels_kept` of N x C decisions, per label too, and `sets_kept`: images whose
  whole label set is the same), with the max |sigmoid probability difference|. The int8 bar is per-label
  agreement >= 97% and the same RMSE rule; its one-sided bound counts the N images, not the N x C decisions, as
  the sample (a label set's decisions are not independent: the bound is as wide as for one decision an image),
  so a good file is refused no more often than a single-label one. A broken export moves every label's
  probability and fails the RMSE rule first; one that loses the rare positive labels fails the agreement.
- the "features" and "knn" outputs of an ONNX export (exporting/outputs.py), against the checkpoint's
  (`Runner.outputs`, the same forward pass as its logits): fp32: max |difference| <= 1e-3, as the logits' 0.1% of
  their scale (features are unit vectors; a kNN distance lies in [0, 2] and is computed in float32 from the same
  float16 bank, so only the backbone's kernel differences reach it: measured ~1e-6). int8: the logits' RMSE rule
  on each output (RMSE at most 30% of the reference's spread, refused only when its one-sided lower bound is
  above; the distances' spread taken as at least 0.05, 2.5% of their range): the features are read off a quantized
  backbone, so they move as the logits do; the distance itself is computed in fp32 from them.
- the out-of-distribution decisions (core/ood.py: "unknown" when a score is above its threshold) at each
  threshold the file's metadata stores, image by image (`ood_decisions`, the agreement per score in the report).
  fp32: an image may be decided otherwise only where the reference's score is within the score's own tolerance
  of the threshold (what the logit and distance bounds allow it to move: a borderline image); any other
  difference refuses the file. int8: reported with its one-sided upper bound, not a refusal rule: the scores are
  held by the RMSE rules above, and at a 95% acceptance the threshold sits where the in-distribution scores thin
  out, so which few images near it change sides depends on the CPU's int8 kernels, as top-1 flips do.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.core import ood as oodscores
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import DataError, ImgclfError
from imgclf.core.escape import one_line
from imgclf.core.multilabel import MULTILABEL
from imgclf.data.feed import make_feed
from imgclf.data.images import UnreadableImage
from imgclf.data.pipeline import decode_one, default_workers, eval_transform
from imgclf.data.sources import Split, listed_task, open_source
from imgclf.evaluation.multilabel import multilabel_metrics
from imgclf.infer.logits import align_classes, infer, open_model_data
from imgclf.infer.predict import expand_paths
from imgclf.infer.runtime import Runner

log = logging.getLogger(__name__)

FP32_REL_TOL = 1e-3
# the features (unit vectors) and the kNN distance (in [0, 2]): 1e-3, as the logits' 0.1% of their scale
FP32_OUTPUT_TOL = {"features": 1e-3, "knn": 1e-3}
# the int8 RMSE rule's spread of the kNN distances is at least this (2.5% of their [0, 2] range): verification
# images whose distances are nearly all alike do not make a good file's small errors look large
SPREAD_FLOOR = {"knn": 0.05}
INT8_MIN_AGREEMENT = 0.97
INT8_MAX_REL_RMSE = 0.30
INT8_CONFIDENCE = 0.95  # one-sided: a file at the bar is refused at most ~5% of the time (see the module docstring)


class VerificationError(ImgclfError):
    """An exported file that does not compute what the checkpoint computes. Exit code 1; nothing is written."""


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
    try:
        src = open_source(data, data_root=data_root, val_fraction=val_fraction, seed=seed)
        s = src.split(split)
        where = f"{os.path.basename(str(data).rstrip('/')) or data} {s.name}"
    except DataError:
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


@dataclass
class ImageSample:
    """`sample_images` of one split, read on the first `load()` (int8 calibration images: only int8 formats
    need them)."""

    data: str
    prep: Preprocess
    split: str
    n: int
    opened: dict  # data_root, val_fraction, seed: the source opened as the checkpoint's training opened it
    _loaded: tuple[torch.Tensor, str] | None = field(default=None, repr=False)

    def load(self) -> tuple[torch.Tensor, str]:
        """(N x 3 x S x S float32, a description such as "153 images of hymenoptera val")."""
        if self._loaded is None:
            self._loaded = sample_images(self.data, self.prep, split=self.split, n=self.n, **self.opened)
        return self._loaded


# --------------------------------------------------------------------------------------------- the rules


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


def batched(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([logits(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def compare(ref: torch.Tensor, out: torch.Tensor, *, int8: bool, thresholds: list[float] | None = None) -> dict:
    """Numbers and the pass/fail verdict for exported logits `out` against reference logits `ref` (N x C).
    `thresholds`: a multi-label model's (one per label): its label decisions are compared instead of top-1.

    int8: `ok` is the verdict of the one-sided tests in the module docstring (refused only on evidence that the
    file is worse than the bar); `meets_bar` says whether the point estimates themselves clear it (what the
    int8 writer aims for before it settles for less)."""
    if out.shape != ref.shape:
        return {"ok": False, "reason": f"output shape {tuple(out.shape)} != {tuple(ref.shape)}", "images": len(ref)}
    diff = (out - ref).abs()
    n = int(len(ref))
    spread = float(ref.std().clamp_min(1e-12))
    per_image = ((out - ref) ** 2).mean(1)  # N: each image's mean squared logit error
    r = {"images": n, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
    if thresholds is None:
        kept = int((out.argmax(1) == ref.argmax(1)).sum())
        r.update(top1_agreement=kept / max(n, 1), top1_kept=kept)
    else:
        r.update(label_agreement_numbers(ref, out, thresholds))
    r.update(
        rel_rmse=float(per_image.mean().sqrt()) / spread,
        logit_scale=float(ref.abs().max()),
        tolerance=tolerance(int8, ref) if thresholds is None else multilabel_tolerance(int8, ref),
    )
    if not torch.isfinite(out).all():
        r.update(ok=False, meets_bar=False, reason="non-finite logits")
    elif int8:
        _int8_verdict(r, per_image, spread)
    else:
        ok = r["max_abs_diff"] <= r["tolerance"]["max_abs_diff"]
        r.update(
            ok=ok,
            reason=""
            if ok
            else f"max |logit difference| {r['max_abs_diff']:.3g} > {r['tolerance']['max_abs_diff']:.3g} ({agreement_text(r)})",
        )
    return r


def multilabel_tolerance(int8: bool, ref: torch.Tensor) -> dict:
    """`tolerance` of a multi-label model: the int8 bar is on per-label agreement (module docstring)."""
    if not int8:
        return tolerance(False, ref)
    return {"min_label_agreement": INT8_MIN_AGREEMENT, "max_rel_rmse": INT8_MAX_REL_RMSE, "confidence": INT8_CONFIDENCE}


def label_agreement_numbers(ref: torch.Tensor, out: torch.Tensor, thresholds: list[float]) -> dict:
    """A multi-label model's label decisions (sigmoid >= its threshold) in `out` against `ref`: decisions kept
    (of N x C, and per label), images whose whole set is kept, the max |sigmoid probability difference|."""
    t = torch.as_tensor(thresholds, dtype=torch.float32)[None, :]
    p_ref, p_out = ref.float().sigmoid(), out.float().sigmoid()
    same = (p_ref >= t) == (p_out >= t)  # N x C
    n = max(int(same.shape[0]), 1)
    return {
        "labels_kept": int(same.sum()),
        "label_decisions": int(same.numel()),
        "label_agreement": float(same.float().mean()) if same.numel() else 1.0,
        "per_label_agreement": [round(float(v), 6) for v in same.float().mean(0)],
        "sets_kept": int(same.all(1).sum()),
        "set_agreement": float(same.all(1).sum()) / n,
        "max_prob_diff": float((p_out - p_ref).abs().max()) if same.numel() else 0.0,
    }


def agreement_text(r: dict) -> str:
    """The agreement part of a verification report, for people (top-1, or a multi-label model's decisions)."""
    if "label_agreement" not in r:
        return f"top-1 agreement {r['top1_agreement']:.3f}"
    return (
        f"label decisions kept {r['labels_kept']}/{r['label_decisions']} = {r['label_agreement']:.1%}, label sets "
        f"kept {r['sets_kept']}/{r['images']}, max |probability diff| {r['max_prob_diff']:.3g}"
    )


def kept_of(r: dict) -> tuple[int, float]:
    """(labels kept, agreement) of a `compare` report: top-1, or a multi-label model's label decisions."""
    if "label_agreement" in r:
        return r["labels_kept"], r["label_agreement"]
    return r.get("top1_kept", 0), r.get("top1_agreement", 0.0)


def _int8_verdict(r: dict, per_image: torch.Tensor, spread: float) -> None:
    """The int8 rule's one-sided tests (module docstring) on `compare`'s numbers `r`, added to it."""
    tol, n, rel_rmse = r["tolerance"], r["images"], r["rel_rmse"]
    multi = "label_agreement" in r
    bar = tol["min_label_agreement" if multi else "min_top1_agreement"]
    kept, agree = kept_of(r)
    upper = agreement_upper_bound(agree * n if multi else kept, n, tol["confidence"])  # multi-label: n images
    lower = rmse_lower_bound(per_image, tol["confidence"]) / spread
    r.update(
        {"label_agreement_upper" if multi else "top1_agreement_upper": upper},
        rel_rmse_lower=lower,
        meets_bar=agree >= bar and rel_rmse <= tol["max_rel_rmse"],
    )
    why = []
    if upper < bar:
        what = f"per-label agreement {kept}/{r['label_decisions']}" if multi else f"top-1 agreement {kept}/{n}"
        why.append(
            f"{what} = {agree:.1%}, whose one-sided {tol['confidence']:.0%} upper bound {upper:.1%} is below {bar:.0%}"
        )
    if lower > tol["max_rel_rmse"]:
        why.append(
            f"logit RMSE {rel_rmse:.1%} of the logits' spread, whose one-sided {tol['confidence']:.0%} "
            f"lower bound {lower:.1%} is above {tol['max_rel_rmse']:.0%}"
        )
    r.update(ok=not why, reason="; ".join(why))


def check_outputs(want: dict, got: dict, names: list[str], *, int8: bool, why: list[str]) -> dict:
    """The export's "features" and "knn" outputs against the reference's (module docstring's rules); a line
    for each that fails goes to `why`."""
    rows = {}
    for name in names:
        if name not in got or name not in want:
            why.append(f"the file has no '{name}' output" if name not in got else f"the checkpoint gives no {name}")
            continue
        a, b = want[name].float().reshape(len(want[name]), -1), got[name].float().reshape(len(got[name]), -1)
        if a.shape != b.shape:
            why.append(f"'{name}' output shape {tuple(got[name].shape)} != {tuple(want[name].shape)}")
            continue
        per_image = ((b - a) ** 2).mean(1)
        spread = max(float(a.std()) if a.numel() > 1 else 1.0, SPREAD_FLOOR.get(name, 1e-12))
        r = {"max_abs_diff": float((b - a).abs().max()), "rel_rmse": float(per_image.mean().sqrt()) / spread}
        if name == "features":
            r["min_cosine"] = float((F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).min())
        if not torch.isfinite(b).all():
            r["tolerance"] = {}
            why.append(f"non-finite values in the '{name}' output")
        elif int8:
            r["tolerance"] = {"max_rel_rmse": INT8_MAX_REL_RMSE, "confidence": INT8_CONFIDENCE}
            r["rel_rmse_lower"] = rmse_lower_bound(per_image, INT8_CONFIDENCE) / spread
            if r["rel_rmse_lower"] > INT8_MAX_REL_RMSE:
                why.append(
                    f"'{name}' RMSE {r['rel_rmse']:.1%} of its spread, whose one-sided lower bound "
                    f"{r['rel_rmse_lower']:.1%} is above {INT8_MAX_REL_RMSE:.0%}"
                )
        else:
            r["tolerance"] = {"max_abs_diff": FP32_OUTPUT_TOL[name]}
            if r["max_abs_diff"] > FP32_OUTPUT_TOL[name]:
                why.append(f"max |{name} difference| {r['max_abs_diff']:.3g} > {FP32_OUTPUT_TOL[name]:.3g}")
        rows[name] = r
    return rows


def _score_tolerance(name: str, delta: float, task: str, classes: int) -> float:
    """How far an fp32 export's `name` score may move when no logit moves more than `delta` (the logits'
    tolerance): energy = -logsumexp is 1-Lipschitz in the max norm (a multi-label model's joint energy sums C
    softplus terms: C x delta); the top softmax probability moves at most by a factor exp(2 delta) (a sigmoid's
    slope is at most 1/4); knn: its own tolerance."""
    if name == "knn":
        return FP32_OUTPUT_TOL["knn"]
    if name == "energy":
        return delta * (classes if task == MULTILABEL else 1)
    return delta / 4 if task == MULTILABEL else math.expm1(2 * delta)


def ood_decisions(
    want: dict, got: dict, record: dict, task: str, *, int8: bool, logit_tol: float, why: list[str]
) -> dict:
    """The "unknown" decision (core/ood.py: score above the threshold) of the export and of the reference at each
    threshold the file stores, image by image: the agreement, per score. fp32: an image may be decided otherwise
    only where the reference's score lies within the score's tolerance of the threshold (`_score_tolerance`: a
    borderline image); int8: reported with its one-sided upper bound, not a refusal rule (module docstring)."""
    s_ref = oodscores.scores({k: v.numpy() for k, v in want.items()}, task)
    s_out = oodscores.scores({k: v.numpy() for k, v in got.items()}, task)
    rows = {}
    for name, t in record["thresholds"].items():
        if name not in s_ref or name not in s_out:
            why.append(
                f"the {name} threshold is stored but the {'file' if name not in s_out else 'checkpoint'} gives no {name} score"
            )
            continue
        a, b = s_ref[name], s_out[name]
        same = (a > t) == (b > t)
        kept, n = int(same.sum()), len(same)
        r = {"threshold": float(t), "kept": kept, "images": n, "agreement": kept / max(n, 1)}
        r["unknown_checkpoint"], r["unknown_export"] = int((a > t).sum()), int((b > t).sum())
        if int8:  # reported, not a refusal rule: the scores are held by the logits' and outputs' RMSE bars
            r["agreement_upper"] = agreement_upper_bound(kept, n, INT8_CONFIDENCE)
        else:
            tol = _score_tolerance(name, logit_tol, task, want["logits"].shape[1])
            r["borderline_tolerance"] = tol
            unexplained = int((~same & (np.abs(a - t) > tol)).sum())
            if unexplained:
                why.append(
                    f"{name} out-of-distribution decisions differ on {unexplained} image(s) whose score is further "
                    f"than {tol:.3g} from the threshold"
                )
        rows[name] = r
    return rows


def batched_outputs(outputs: Callable[[torch.Tensor], dict], x: torch.Tensor, batch_size: int) -> dict:
    """A runner's `outputs` (core/ood.py's OUTPUTS names) on `x`, in batches, concatenated."""
    parts = [outputs(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def verify(
    ref: Runner,
    exported: Runner,
    images: torch.Tensor,
    *,
    int8: bool,
    batch_size: int = 32,
    ref_logits: torch.Tensor | None = None,
    ref_outputs: dict | None = None,
    outputs: list[str] | tuple[str, ...] = ("logits",),
) -> dict:
    """Run both on `images` (in batches, then the first image alone) and compare; see the module docstring.
    `ref_logits` / `ref_outputs`: the reference's logits / outputs on `images` when already computed. `outputs`:
    what the file must give (an ONNX export: features and knn too), each checked against the reference; then
    the out-of-distribution decisions at the file's stored thresholds (`check_outputs`, `ood_decisions`)."""
    if ref_outputs is not None:
        want = ref_outputs
    elif len(outputs) > 1:
        want = batched_outputs(ref.outputs, images, batch_size)
    else:
        want = {"logits": batched(ref.logits, images, batch_size) if ref_logits is None else ref_logits}
    got = batched_outputs(exported.outputs, images, batch_size)
    r_ref, r_out = want["logits"], got["logits"]
    report = compare(r_ref, r_out, int8=int8, thresholds=ref.thresholds if ref.task == MULTILABEL else None)
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
    if "tolerance" not in report:  # the logits' shape is wrong: nothing else to compare
        return report
    why = [report["reason"]] if report.get("reason") else []
    if len(outputs) > 1:
        report["outputs"] = check_outputs(want, got, list(outputs[1:]), int8=int8, why=why)
    if exported.ood is not None:
        delta = report["tolerance"].get("max_abs_diff", 0.0)
        report["ood"] = ood_decisions(want, got, exported.ood, ref.task, int8=int8, logit_tol=delta, why=why)
    report.update(ok=not why, reason="; ".join(why))
    return report


# --------------------------------------------------------------------------------------------- accuracy


def check_same_kind(data: str, data_task: str, model_task: str) -> None:
    """Data of the model's kind (single-label or multi-label), or one line that says which is which."""
    if (data_task == MULTILABEL) != (model_task == MULTILABEL):
        raise DataError(
            f"'{data}' is {'multi-label' if data_task == MULTILABEL else 'single-label'} data but the model is "
            f"{'multi-label' if model_task == MULTILABEL else 'single-label'}: pass --data with data of its kind"
        )


def check_data_kind(data: str, model_task: str) -> None:
    """`--data` against the model's task before any work: a CSV manifest is listed (nothing decoded) for its task;
    class folders and named sets are single-label."""
    check_same_kind(data, listed_task(data), model_task)


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
    """Top-1 accuracy of each runner on the same decoded images of `split` (they share one preprocessing); for a
    multi-label model (the first runner's task) a dict per runner instead: mAP (macro) and micro-F1 at the
    model's thresholds (evaluation/multilabel.py)."""
    src, s = open_model_data(config, data, split, data_root)
    check_same_kind(data, src.task, runners[0].task)
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
        log.warning("left out %s: %s", one_line(path), one_line(reason))
    accs = []
    for r in runners:
        logits, labels = infer(r, feed.batches(), desc=f"{r.format} {split}")
        if r.task == MULTILABEL:
            accs.append(_multilabel_quality(r, logits, labels, mapping))
        else:
            accs.append(float((logits.argmax(1) == mapping[labels]).float().mean()) if len(labels) else float("nan"))
    return accs, len(feed), f"{src.location} {split}"


def _multilabel_quality(r: Runner, logits: torch.Tensor, targets: torch.Tensor, mapping: torch.Tensor) -> dict:
    """mAP (macro) and micro-F1 of a multi-label runner's `logits` against multi-hot `targets` (the data's label
    order, put in the model's by `mapping`), at the runner's thresholds."""
    if not len(targets):
        return {"mAP": float("nan"), "micro_f1": float("nan")}
    y = torch.zeros(len(targets), len(r.classes))
    y[:, mapping] = targets.float()
    m = multilabel_metrics(r.probabilities(logits).numpy(), y.numpy(), r.thresholds, list(r.classes))
    return {"mAP": m["mAP"], "micro_f1": m["micro_f1"]}
