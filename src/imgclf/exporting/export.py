"""`imgclf export`: a checkpoint to a deployment format; every file is checked against eager PyTorch before it
exists.

One table of formats (`FORMATS`, core/formats.py): name, default suffix, the packages it needs, whether it is int8
(which decides its verification rule), the function that writes it (writers.py, int8.py) and the one in
infer/runtime.py that opens it.

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

Every file carries imgclf metadata (`make_metadata`: format, model name, classes, preprocessing, training config,
the source checkpoint, the out-of-distribution record where the checkpoint has one): ONNX
`metadata_props["imgclf"]`, `extra/imgclf.json` in TorchScript and pt2 archives, a
`meta` entry in the dynamic-int8 dict. `runtime.open_model` reads any of them. Where the checkpoint has a
MODEL_CARD.md beside it (evaluation/card.py), the metadata's "model_card" points to it: its path relative to the
export and its sha256 (a pointer, not the text: a card is kilobytes and changes when `imgclf card` adds an
evaluation); an export written into another folder gets a copy of the card beside it. The ONNX graphs also give the
penultimate features and, with the checkpoint's kNN bank, the k-th neighbour distance (outputs.py); the record of
a file without that distance has no knn threshold.

The file is written under a temporary name, opened as any user would open it, and verified on real images
(verify.py: the rules and why). A file that fails is deleted and the export raises `VerificationError`: never a
warning. The report (`format_export_report`) is also written beside the file, as OUT.json.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import torch

from imgclf.core.errors import DataError, ImgclfError, UsageError, did_you_mean
from imgclf.core.fileio import disk_full_error, human_size, temp_beside, write_json
from imgclf.core.formats import DEFAULT_OPSET, FORMATS, ExportFormat
from imgclf.core.multilabel import MULTILABEL
from imgclf.core.ood import usable
from imgclf.core.version import __version__
from imgclf.evaluation.card import ExportCard, copy_card, export_card
from imgclf.exporting.context import CALIB_METHODS, DEFAULT_INT8_TARGET, DEFAULT_INT8_TRIES, ExportContext
from imgclf.exporting.int8 import VARIANT_TEXT
from imgclf.exporting.outputs import ONNX_FORMATS, output_names
from imgclf.exporting.verify import ImageSample, VerificationError, accuracy_on, check_data_kind, verify
from imgclf.infer.runtime import CheckpointRunner, Runner, open_model
from imgclf.models.tta import check_mode

log = logging.getLogger(__name__)

DEFAULT_CALIB_IMAGES = 256
DEFAULT_VERIFY_IMAGES = (
    500  # all of a typical validation split (hymenoptera: 153); the int8 rule's bound tightens with n
)


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


def default_out(weights: str, fmt: ExportFormat) -> str:
    stem, _ = os.path.splitext(os.path.abspath(weights))
    return stem + fmt.suffix


def make_metadata(
    ref: CheckpointRunner, fmt: ExportFormat, weights: str, card: tuple[ExportCard, str] | None = None
) -> dict:
    """The imgclf metadata of an export of `ref` as `fmt` (`card`: the model card and the export's path, for the
    "model_card" pointer). ONNX files add "outputs" (their graph's outputs:
    logits, features and, with a bank, knn; the writer adds the shapes); every file carries the checkpoint's
    out-of-distribution record as "ood", without its knn threshold where the file has no knn output, and no
    "ood" where no threshold remains. "output" (the logits) stays for older readers."""
    ckpt = ref.ckpt
    names = output_names(ref) if fmt.name in ONNX_FORMATS else ["logits"]
    meta = {
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
        # core/multilabel.py: single (softmax) or multilabel (sigmoid per label, its label set by these thresholds)
        "task": ref.task,
        "thresholds": ref.thresholds,
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
    if fmt.name in ONNX_FORMATS:
        meta["outputs"] = [{"name": n} for n in names]
    record = usable(ref.ood, "knn" in names)  # without the knn threshold where the file gives no distance
    if record is not None:
        meta["ood"] = record
    if card is not None:
        meta["model_card"] = card[0].pointer(card[1])
    return meta


# --------------------------------------------------------------------------------------------- the command


def export(
    weights: str,
    format: str,
    *,
    out: str | None = None,
    calib_data: str | None = None,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    calib_method: str = "minmax",
    reduce_range: bool | None = None,
    verify_data: str | None = None,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    data: str | None = None,
    split: str = "val",
    data_root: str | None = None,
    opset: int = DEFAULT_OPSET,
    max_eval_images: int | None = None,
    int8_tries: int = DEFAULT_INT8_TRIES,
    int8_target: float = DEFAULT_INT8_TARGET,
    tta: str | None = None,
) -> dict:
    """Export checkpoint `weights` as `format`, verify it against eager PyTorch, and only then write `out`.

    Calibration images (int8): `calib_data` (a data source or a folder of images), default the training split
    of the data the checkpoint records. Verification images: the validation split of `verify_data`, default
    the recorded data (or the calibration data when the checkpoint records none), all of it up to
    `verify_images`. onnx-int8 starts with `calib_method` and tries until a file keeps `int8_target` of the
    verification images' labels, at most `int8_tries` quantizations (1: that one only), and writes the best it
    made (see int8.py). With `data`, the accuracy
    of the checkpoint and of the export on its `split`. The checkpoint's temperature (imgclf calibrate) is in
    the exported graph; `tta` (flip, flip-crop, none: models/tta.py) puts test-time augmentation there too, and then the
    accuracy of the checkpoint without it is measured as well (on `data`, default the recorded data).
    Returns a report dict (also what `--json` prints)."""
    fmt, tta = get_format(format), check_mode(tta)
    _check_settings(
        calib_method, int8_target, calib_images=calib_images, verify_images=verify_images, int8_tries=int8_tries
    )
    ref = _reference(weights, tta)
    out = _out_path(out, weights, fmt)
    data = data or (ref.config.get("data") if tta is not None else None)  # --tta: what it changes is always measured
    if data:
        check_data_kind(data, ref.task)  # a model and data of different tasks: refused before the export's work
    check, calib = _samples(ref, verify_data, calib_data, data_root, n_check=verify_images, n_calib=calib_images)
    t0 = time.perf_counter()
    images, checked_on = check.load()
    int8 = dict(calib_method=calib_method, reduce_range=reduce_range, int8_tries=int8_tries, int8_target=int8_target)
    ctx = ExportContext(ref, images, calib, opset=opset, **int8)
    card = export_card(weights, out)
    with _temporary(out, fmt.suffix) as tmp:
        result, exported = _write_verified(ctx, fmt, tmp, out, checked_on, card)
        if data:
            result["accuracy"] = _accuracies(
                ref, exported, fmt, data, split=split, data_root=data_root, max_images=max_eval_images
            )
        os.replace(tmp, out)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if card is not None:
        result["model_card"] = _place_card(card)
    _write_record(result, out)
    return result


def _check_settings(calib_method: str, int8_target: float, **counts: int) -> None:
    """The int8 settings and the image counts, checked before anything is opened."""
    if not 0 < int8_target <= 1:
        raise UsageError(
            f"--int8-target must be above 0 and at most 1 (0.99: 99% of the labels kept), not {int8_target}"
        )
    if calib_method not in CALIB_METHODS:
        raise UsageError(
            f"--calib-method '{calib_method}': use minmax, entropy or percentile{did_you_mean(calib_method, list(CALIB_METHODS))}"
        )
    for name, v in counts.items():
        if v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def _reference(weights: str, tta: str | None) -> CheckpointRunner:
    """The checkpoint as the export is checked against: eager fp32, NCHW, on the cpu, with `tta` in its net."""
    runner = open_model(weights, device="cpu", precision="fp32")
    if not isinstance(runner, CheckpointRunner):
        raise UsageError(
            f"'{weights}' is already an exported model ({runner.format}): export from the checkpoint it came from"
        )
    return CheckpointRunner(weights, device="cpu", precision="fp32", channels_last=False, ckpt=runner.ckpt, tta=tta)


def _out_path(out: str | None, weights: str, fmt: ExportFormat) -> str:
    """`out` (default: beside the checkpoint, with the format's suffix) made absolute; its folder made."""
    out = os.path.abspath(out or default_out(weights, fmt))
    if os.path.isdir(out):
        raise UsageError(
            f"--out '{out}' is a folder: give a file name such as {os.path.join(out, 'model' + fmt.suffix)}"
        )
    if os.path.abspath(out) == os.path.abspath(weights):
        raise UsageError(f"--out '{out}' is the checkpoint itself: choose another file name")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return out


def _samples(
    ref: CheckpointRunner, verify_data, calib_data, data_root, *, n_check: int, n_calib: int
) -> tuple[ImageSample, ImageSample]:
    """The verification images (the validation split of `verify_data`, default the data the checkpoint records,
    else the calibration data) and the calibration images (the training split of `calib_data`, default the
    recorded data, else the verification data), each source opened as the checkpoint's training opened it."""
    cfg = ref.config
    recorded = cfg.get("data")
    vdata = verify_data or recorded or calib_data
    if not vdata:
        raise DataError(
            "the checkpoint records no data to verify the export on: pass --verify-data (or --calib-data) with images"
        )
    opened = dict(
        data_root=data_root or cfg.get("data_root"), val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0)
    )
    check = ImageSample(vdata, ref.preprocess, "val", n_check, opened)
    return check, ImageSample(calib_data or recorded or vdata, ref.preprocess, "train", n_calib, opened)


@contextlib.contextmanager
def _temporary(out: str, suffix: str):
    """A hidden temporary file beside `out`, with the format's own suffix (torch.export warns about other
    names), removed when anything fails; a full disk is said so."""
    fd, tmp = temp_beside(out, suffix=".tmp" + suffix)
    os.close(fd)
    try:
        yield tmp
    except BaseException as e:
        full = disk_full_error(e, out, tmp=tmp) if isinstance(e, Exception) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full is not None:
            raise full from e
        raise


def _write_verified(
    ctx: ExportContext, fmt: ExportFormat, tmp: str, out: str, checked_on: str, card: ExportCard | None = None
) -> tuple[dict, Runner]:
    """`fmt`'s writer writes `tmp`, which is opened as a user would and verified on `ctx.check` (`checked_on`
    says what they are): (the report, the opened file), or a VerificationError."""
    ref, weights = ctx.ref, ctx.ref.path
    meta = make_metadata(ref, fmt, weights, None if card is None else (card, out))
    log.info("exporting %s (%s) as %s ...", weights, ref.model_name, fmt.name)
    fmt.write(ctx, tmp, meta)
    exported = open_model(tmp, device="cpu", format=fmt.name)
    outputs = [o["name"] for o in meta.get("outputs", [{"name": "logits"}])]
    report = verify(ref, exported, ctx.check, int8=fmt.int8, ref_outputs=ctx.check_outputs(), outputs=outputs)
    if not report["ok"]:
        raise VerificationError(
            f"{fmt.name} export of {weights} failed verification on {checked_on}: {report['reason']}; "
            f"nothing written{_int8_hint(meta)}"
        )
    result = {
        "format": fmt.name,
        "out": out,
        "weights": os.path.abspath(weights),
        "model": ref.model_name,
        "size_bytes": os.path.getsize(tmp),
        "verification": {**report, "data": checked_on},
        "outputs": meta.get("outputs", [meta["output"]]),
        "note": fmt.note,
        "export": meta["export"],
        "temperature": ref.temperature,
        "tta": ref.tta,
    }
    if "calib_data" in ctx.info:
        result["calibration"] = ctx.info["calib_data"]
    return result, exported


def _place_card(card: ExportCard) -> str:
    """The model card beside the export (a copy, in another folder); its path. The export is done: a card that
    cannot be copied is a warning."""
    try:
        copy_card(card)
    except (OSError, ImgclfError) as e:
        log.warning("could not copy the model card to %s: %s", card.dest, e)
    return card.dest


def _write_record(result: dict, out: str) -> None:
    """OUT.json beside the export: this report (its verification numbers), which report.html's parity table
    reads. The export itself is done: a record that cannot be written is a warning, not a failed export."""
    try:
        write_json(result, out + ".json")
    except (OSError, ImgclfError) as e:
        log.warning("could not write %s.json (the export's verification record): %s", out, e)


def _accuracies(ref, exported, fmt, data, *, split, data_root, max_images) -> dict:
    """The accuracy of the checkpoint and of the export (and, with --tta, of the checkpoint without it)."""
    runners = [ref, exported]
    if ref.tta is not None:
        runners.append(CheckpointRunner(ref.path, device="cpu", precision="fp32", channels_last=False, ckpt=ref.ckpt))
    accs, n, where = accuracy_on(
        runners, data, split=split, data_root=data_root, config=ref.config, max_images=max_images
    )
    if ref.task == MULTILABEL:
        return _multilabel_accuracies(ref, fmt, accs, n, where)
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


def _multilabel_accuracies(ref, fmt, accs: list[dict], n: int, where: str) -> dict:
    """`_accuracies` of a multi-label model: mAP and micro-F1 (at its thresholds) of the checkpoint and the
    export, the drops in points."""
    r = {"data": where, "images": n, "metric": "mAP", "checkpoint": accs[0], fmt.name: accs[1]}
    for k in ("mAP", "micro_f1"):
        a, b = accs[0][k], accs[1][k]
        r[f"{k}_drop_points"] = None if a is None or b is None else 100.0 * (a - b)
    if ref.tta is not None:
        r.update(tta=ref.tta, checkpoint_without_tta=accs[2])
    return r


# --------------------------------------------------------------------------------------------- the report


def _kept(t: dict) -> str:
    """An int8 try's labels kept: top-1 of the images, or a multi-label model's label decisions."""
    if t.get("labels_kept") is not None:
        return f"{t['labels_kept']}/{t['label_decisions']}"
    return f"{t['top1_kept']}/{t['images']}"


def _int8_hint(meta: dict) -> str:
    q = meta["export"].get("quantization")
    if not q:
        return ""
    tried = ", ".join(f"{_try_text(t)} {_kept(t)}" for t in q["tries"])
    return (
        f" (int8 tries, labels kept: {tried}; calibrate on images closer to the verification data with "
        f"--calib-data, or with more --calib-images)"
    )


def _int8_lines(q: dict) -> list[str]:
    """What the int8 writer did, for people: the remedy used, the target, and each try's labels kept and speed."""
    how = (
        "every node quantized"
        if not q["fp32_nodes"]
        else (
            f"{len(q['fp32_nodes'])} nodes kept fp32 ({', '.join(q['fp32_nodes'])}): "
            + "; ".join(r["why"] for r in q["fp32_reasons"])
        )
    )
    variant = f", {VARIANT_TEXT.get(q['variant'], q['variant'])}" if q.get("variant") else ""
    lines = [f"int8: {q['calibration']} calibration{variant}, {how} (try {q['chosen_try']} of {len(q['tries'])})"]
    target = q.get("target")
    if target:
        lines.append(
            f"int8 target: {target['labels']}/{target['of']} labels kept ({target['agreement']:.0%}): "
            f"{'reached' if target['reached'] else 'not reached, the tries ran out: the best try is written'}"
        )
    if len(q["tries"]) > 1 or target:
        lines.append("int8 tries (labels kept, RMSE of the logits, speed against try 1 on this machine):")
        lines += [
            f"  {i}. {_try_text(t)}: failed ({t['failed']})"
            if t.get("failed")
            else f"  {i}. {_try_text(t)}: {_kept(t)} kept, RMSE {t['rel_rmse']:.1%}"
            + (f", {t['speed_vs_first']:.2f}x" if t.get("speed_vs_first") is not None else "")
            + ("  <- written" if i == q["chosen_try"] else "")
            for i, t in enumerate(q["tries"], 1)
        ]
    return lines


def _try_text(t: dict) -> str:
    """An int8 try for people: 'minmax', 'entropy, symmetric, 12 nodes fp32'."""
    parts = [t["calibration"]] + ([VARIANT_TEXT.get(t["variant"], t["variant"])] if t.get("variant") else [])
    return ", ".join(parts + ([f"{len(t['fp32_nodes'])} nodes fp32"] if t["fp32_nodes"] else []))


def _multilabel_numbers(v: dict) -> tuple[str, str]:
    """The verification numbers and rule of a multi-label model's export, for people."""
    tol = v["tolerance"]
    numbers = (
        f"label decisions at the stored thresholds kept {v['labels_kept']}/{v['label_decisions']} = "
        f"{v['label_agreement']:.1%}, label sets kept {v['sets_kept']}/{v['images']}, max |probability diff| "
        f"{v['max_prob_diff']:.3g}"
    )
    if "min_label_agreement" in tol:
        numbers += (
            f" (per-label agreement's one-sided {tol['confidence']:.0%} upper bound {v['label_agreement_upper']:.1%}"
            f"), RMSE {v['rel_rmse']:.1%} of logit spread (lower bound {v['rel_rmse_lower']:.1%})"
        )
        rule = (
            f"refused only if the per-label agreement's upper bound is below {tol['min_label_agreement']:.0%} "
            f"or the RMSE's lower bound above {tol['max_rel_rmse']:.0%}"
        )
    else:
        numbers = f"max |logit diff| {v['max_abs_diff']:.3g}, " + numbers
        rule = f"max |diff| <= {tol['max_abs_diff']:.3g}"
    return numbers, rule


def _multilabel_accuracy_lines(r: dict) -> list[str]:
    a, f = r["accuracy"], r["format"]

    def num(x):
        return "n/a" if x is None else f"{x:.4f}"

    with_tta = f" with --tta {a['tta']}" if a.get("tta") else ""
    lines = [
        f"on {a['data']} ({a['images']} images), mAP: checkpoint{with_tta} {num(a['checkpoint']['mAP'])}, {f} "
        f"{num(a[f]['mAP'])}; micro-F1 at the thresholds: checkpoint {num(a['checkpoint']['micro_f1'])}, "
        f"{f} {num(a[f]['micro_f1'])}"
    ]
    if a.get("tta"):
        w = a["checkpoint_without_tta"]
        lines.append(f"test-time augmentation {a['tta']}: checkpoint without it mAP {num(w['mAP'])}")
    return lines


def _temperature_line(t) -> str | None:
    if isinstance(t, list):
        shown = ", ".join(f"{v:.3g}" for v in t)
        return f"temperature per label [{shown}] (from imgclf calibrate) is in the exported graph"
    if t is not None and t != 1.0:
        return f"temperature {t:.4g} (from imgclf calibrate) is in the exported graph"
    return None


def _outputs_lines(v: dict) -> list[str]:
    """The features and knn outputs and the out-of-distribution decisions of a verification, for people."""
    lines = []
    if v.get("outputs"):
        lines.append(
            "outputs checked: "
            + ", ".join(
                f"{name} max |diff| {o['max_abs_diff']:.3g}, RMSE {o['rel_rmse']:.1%} of spread"
                for name, o in v["outputs"].items()
            )
        )
    if v.get("ood"):
        lines.append(
            "out-of-distribution decisions at the stored thresholds kept: "
            + ", ".join(f"{name} {o['kept']}/{o['images']}" for name, o in v["ood"].items())
        )
    return lines


def format_export_report(r: dict) -> str:
    v = r["verification"]
    tol = v["tolerance"]
    if "label_agreement" in v:
        numbers, rule = _multilabel_numbers(v)
    elif "min_top1_agreement" in tol:
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
    lines += _outputs_lines(v)
    if r.get("calibration"):
        lines.append(f"calibrated on {r['calibration']}")
    if r.get("export", {}).get("quantization"):
        lines += _int8_lines(r["export"]["quantization"])
    if r.get("accuracy") and r["accuracy"].get("metric") == "mAP":
        lines += _multilabel_accuracy_lines(r)
    elif r.get("accuracy"):
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
    if _temperature_line(r.get("temperature")):
        lines.append(_temperature_line(r.get("temperature")))
    if r.get("note"):
        lines.append(f"note: {r['note']}")
    return "\n".join(lines)
