"""The run's end (rank 0): best.pt validated once more, the plots, --calibrate, the out-of-distribution fit,
results.json, report.html, MODEL_CARD.md."""

from __future__ import annotations

import os
import time

import torch

from imgclf.compute.machine import git_commit, machine_report, summary_line
from imgclf.core.callback import Callback
from imgclf.core.multilabel import DEFAULT_THRESHOLD, MULTILABEL
from imgclf.core.version import __version__
from imgclf.evaluation.calibration import calibrate, format_calibration, trust_metrics
from imgclf.evaluation.card import write_card
from imgclf.evaluation.command import write_eval_plots
from imgclf.evaluation.metrics import compute_metrics
from imgclf.evaluation.multilabel import multilabel_metrics
from imgclf.evaluation.ood_fit import fit_ood, fitting_runner, store
from imgclf.evaluation.ood_fit import summary as ood_summary
from imgclf.evaluation.plots import plot_curves
from imgclf.evaluation.report import build_report
from imgclf.infer.logits import infer
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint, load_weights, task_of, temperature_of
from imgclf.training.multilabel import bce_per_image


class FinalReport(Callback):
    """After the last epoch: the best checkpoint evaluated once more on validation, in fp32 as `imgclf evaluate`
    runs it (results.json's numbers are the ones a user gets back); curves.png and the validation plots;
    --calibrate's temperature; the out-of-distribution thresholds and kNN bank (with that temperature) kept in
    best.pt; results.json (with what earlier callbacks put in `trainer.results`), report.html, MODEL_CARD.md
    (evaluation/card.py, from results.json and best.pt) and the run's last lines. On the other ranks, a short
    summary."""

    order = 1000  # the last at on_fit_end: it reports what the others left

    def on_fit_end(self, trainer) -> None:
        st, world = trainer.state, trainer.plan.world
        train_seconds = time.perf_counter() - trainer.started  # this session: from fit() to the last epoch
        if not world.main:  # rank 0 evaluates the best checkpoint and writes the results
            own = {"best_epoch": st.best["epoch"], "epochs": len(st.rows), "steps": st.step, "rank": world.rank}
            trainer.results = with_callbacks(trainer, own)
            return
        best_path = trainer.run_dir.file("best.pt")
        if trainer.plan.cfg.task == MULTILABEL:
            return report_multilabel(trainer, best_path, train_seconds)
        logits, labels, bm = validate_best(trainer, best_path)
        results = with_callbacks(trainer, summary(trainer, bm, train_seconds) | card_facts(trainer))
        if trainer.plan.cfg.calibrate:
            results["calibration"] = calibration(trainer, best_path)
        results["ood"] = fit_run_ood(trainer, best_path)
        results["trust"] = trust_of(logits, labels, temperature_of(load_checkpoint(best_path)))
        trainer.run_dir.write_results(results)
        try:  # report.html is a convenience: it never fails the run
            # the validation logits above, not a second pass: the runner gives the page the classes and the
            # temperature (--calibrate's, which its runner would have divided the logits by)
            runner = open_model(best_path, device="cpu", precision="fp32")
            predictions = (logits / runner.temperature, labels, trainer.data.val.split, runner)
            build_report(trainer.run_dir.path, predictions=predictions)
        except Exception as e:
            trainer.run_dir.warning("report.html not written: %s: %s", type(e).__name__, e)
        write_run_card(trainer, best_path)
        if trainer.stop_reason:
            trainer.info("%s", trainer.stop_reason)
        trainer.info(
            "best epoch %d%s: val_acc %.4f val_macro_f1 %.4f; weights %s",
            st.best["epoch"],
            " (EMA weights)" if st.best["weights"] == "ema" else "",
            bm["accuracy"],
            bm["macro_f1"],
            best_path,
        )
        trainer.results = results


def report_multilabel(trainer, best_path: str, train_seconds: float) -> None:
    """A multi-label run's end: best.pt's validation scores in fp32, its metrics at the thresholds fitted for
    --threshold (kept in best.pt by the checkpoint) and at 0.5 for comparison, the fit's notes; results.json
    (`best`: evaluation/multilabel.multilabel_metrics's keys, plus loss) and report.html."""
    st, cfg, data = trainer.state, trainer.plan.cfg, trainer.data
    ckpt = load_checkpoint(best_path)
    load_weights(st.model, ckpt, best_path)
    feed, device = trainer.eval_feed.batches(), trainer.plan.device
    logits, targets = infer(
        trainer.step_model, feed, device, None, desc="validate best", channels_last=cfg.channels_last
    )
    probs, y, classes = torch.sigmoid(logits).numpy(), targets.numpy(), data.source.classes
    thresholds = task_of(ckpt)[1]
    best = multilabel_metrics(probs, y, thresholds, classes)
    best["loss"] = bce_per_image(logits, targets)
    at_half = multilabel_metrics(probs, y, [DEFAULT_THRESHOLD] * len(classes), classes)
    plot_curves(st.rows, trainer.run_dir.file("curves.png"))
    results = with_callbacks(trainer, summary(trainer, best, train_seconds) | card_facts(trainer))
    notes = ckpt.get("threshold_notes") or []
    results |= {"task": MULTILABEL, "best": best, "best_at_0.5": at_half, "thresholds": thresholds}
    results |= {"threshold_goal": cfg.threshold, "threshold_notes": notes}
    results["ood"] = fit_run_ood(trainer, best_path)
    trainer.run_dir.write_results(results)
    try:  # report.html is a convenience: it never fails the run
        build_report(trainer.run_dir.path)
    except Exception as e:
        trainer.run_dir.warning("report.html not written: %s: %s", type(e).__name__, e)
    write_run_card(trainer, best_path)
    for note in notes:
        trainer.info("thresholds: %s", note)
    if trainer.stop_reason:
        trainer.info("%s", trainer.stop_reason)
    trainer.info(
        "best epoch %d%s: val_mAP %.4f; at the thresholds fitted for --threshold %s: micro-F1 %.4f (%.4f at 0.5), "
        "macro-F1 %.4f (%.4f at 0.5); thresholds %s; weights %s",
        st.best["epoch"],
        " (EMA weights)" if st.best["weights"] == "ema" else "",
        best["mAP"] if best["mAP"] is not None else float("nan"),
        cfg.threshold,
        best["micro_f1"],
        at_half["micro_f1"],
        best["macro_f1"],
        at_half["macro_f1"],
        ", ".join(f"{c} {t:.3g}" for c, t in zip(classes, thresholds)),
        best_path,
    )
    trainer.results = results


def with_callbacks(trainer, own: dict) -> dict:
    """results.json's own keys, then what callbacks put in `trainer.results`; a callback's key never replaces one
    of the run's own (a warning says which were left out)."""
    clash = sorted(set(own) & set(trainer.results))
    if clash:
        trainer.run_dir.warning("results.json keeps its own %s: a callback's values for them are left out", clash)
    return {**own, **{k: v for k, v in trainer.results.items() if k not in own}}


def validate_best(trainer, best_path: str):
    """(logits, labels, metrics) of best.pt's weights on validation, in fp32; curves.png and the validation plots."""
    st, cfg, data = trainer.state, trainer.plan.cfg, trainer.data
    load_weights(st.model, load_checkpoint(best_path), best_path)
    logits, labels = infer(
        trainer.step_model,
        trainer.eval_feed.batches(),
        trainer.plan.device,
        None,
        desc="validate best",
        channels_last=cfg.channels_last,
    )
    bm = compute_metrics(logits, labels, data.source.classes)
    plot_curves(st.rows, trainer.run_dir.file("curves.png"))
    title = f"validation, best epoch {st.best['epoch']}"
    write_eval_plots(bm, logits, labels, data.val, data.source.classes, trainer.run_dir.path, title=title)
    return logits, labels, bm


# results.json's "best": the best checkpoint's validation metrics, the per-class table and confusion matrix included
BEST_KEYS = ("accuracy", "loss", "macro_f1", "top5_accuracy", "num_images", "per_class", "confusion_matrix")


def summary(trainer, bm: dict, train_seconds: float) -> dict:
    """results.json's own part: the best epoch and its metrics, the run's length, time and set-up."""
    st, plan, data = trainer.state, trainer.plan, trainer.data
    return {
        "best_epoch": st.best["epoch"],
        "best_weights": st.best["weights"],
        "monitor": plan.cfg.monitor,
        "best": {k: bm[k] for k in BEST_KEYS if k in bm},
        "epochs": len(st.rows),
        "stopped_early": trainer.stop_reason,
        "total_seconds": round(sum(r["seconds"] for r in st.rows), 2),
        "train_seconds": round(train_seconds, 2),  # this session: from the first hook to the last epoch
        "steps": st.step,
        "setup_seconds": round(trainer.setup_seconds, 2),
        "model": plan.cfg.model,
        "classes": data.source.classes,
        "left_out": len(data.left_out),
        "precision": st.precision,
        "options_set": sorted(plan.cfg.explicit),
        "balance": plan.balance,
        "data_fingerprint": data.fingerprint,
        "world_size": plan.world.size,
        **budget_record(plan),
    } | ({"groups": data.source.grouping} if data.source.grouping else {})


def budget_record(plan) -> dict:
    """--time-budget's plan for results.json: the minutes and the steps and epochs it decided (TimeBudget)."""
    cfg = plan.cfg
    if not cfg.time_budget:
        return {}
    return {
        "time_budget": {"minutes": cfg.time_budget, "planned_steps": plan.total_steps, "planned_epochs": cfg.epochs}
    }


def calibration(trainer, best_path: str) -> dict:
    """--calibrate: the temperature of best.pt, fitted on the validation split (evaluation/calibration.py) and kept in it."""
    cfg = trainer.plan.cfg
    # the out-of-distribution fit follows (fit_run_ood), from the run's decoded data, with this temperature
    r = calibrate(best_path, data_root=cfg.data_root, workers=cfg.workers, cache=cfg.cache, refit_ood=False)
    for line in format_calibration(r).splitlines():
        trainer.info("%s", line)
    return {k: v for k, v in r.to_dict().items() if k not in ("weights", "data", "ood")}  # ood: fit_run_ood's


def fit_run_ood(trainer, best_path: str) -> dict:
    """best.pt's out-of-distribution record (evaluation/ood_fit.py), fitted on its model (with --calibrate's
    temperature) from the run's decoded data: a bank of up to --ood-bank training images and each score's threshold
    for --ood-accept of the validation images; kept in best.pt, returned for results.json and logged in one line.
    last.pt and epoch_N.pt get none: they hold other weights, for resuming (`imgclf calibrate` fits one on any
    checkpoint). A fit that cannot be made is one line, {"fitted": false, "reason"} in results.json, and the
    run's other results stand."""
    cfg, data = trainer.plan.cfg, trainer.data
    if data.val is None or len(data.val) == 0:
        reason = "the run has no validation images to fit the thresholds on"
    else:
        try:
            runner = fitting_runner(
                best_path, load_checkpoint(best_path), device=str(trainer.plan.device), channels_last=cfg.channels_last
            )
            entry = fit_ood(
                runner,
                data.train,
                data.val,
                bank_size=cfg.ood_bank,
                accept=cfg.ood_accept,
                seed=cfg.seed,
                left_out=len(data.left_out),
            )
            store(runner.ckpt, entry, best_path)
            trainer.info("%s; %.1f s", ood_summary(entry["record"]), entry["record"]["seconds"])
            return entry["record"]
        except Exception as e:  # the run's weights and metrics stand without it
            reason = f"{type(e).__name__}: {e}"
    trainer.run_dir.warning(
        "out-of-distribution thresholds not fitted (%s): fit them with `imgclf calibrate %s`", reason, best_path
    )
    return {"fitted": False, "reason": reason}


def trust_of(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """results.json's "trust": ECE and the coverage table of best.pt's validation probabilities as the model gives
    them (divided by its temperature, --calibrate's or 1), without the reliability bins (report.html draws them)."""
    t = trust_metrics(logits / temperature, labels)
    return {"temperature": temperature, "ece": t["ece"], "ece_bins": t["ece_bins"], "selective": t["selective"]}


def card_facts(trainer) -> dict:
    """What the model card tells of a run that results.json did not hold: the images per class of each split the
    run used ("data": the readable ones, as trained and validated on; a test split as listed, nothing decoded) and
    the software and machine it ran on, the project's git commit ("provenance")."""
    src = trainer.data.source
    counts = {name: split_counts(split, src.classes) for name, split in src.splits.items()}
    data = {"kind": src.kind, "location": str(src.location), "val_origin": src.val_origin, "counts": counts}
    present = [n for n in counts.get("train", {}).values() if n]  # largest / smallest class of train, as check says
    data["imbalance_ratio"] = round(max(present) / min(present), 2) if present else None
    provenance = {
        "imgclf_version": __version__,
        "torch_version": str(torch.__version__),
        "machine": summary_line(machine_report()),
        "git_commit": git_commit(os.getcwd()),
    }
    return {"data": data, "provenance": provenance}


def split_counts(split, classes: list[str]) -> dict[str, int]:
    """Images per class of a split (a multi-label split: images holding each label)."""
    if split.targets is not None:
        return {c: int(n) for c, n in zip(classes, split.targets.sum(0).tolist())}
    n = torch.bincount(torch.as_tensor(split.labels, dtype=torch.long), minlength=len(classes)).tolist()
    return dict(zip(classes, n))


def write_run_card(trainer, best_path: str) -> None:
    """MODEL_CARD.md beside best.pt (evaluation/card.py); a card that cannot be written is a warning, never a
    failed run (`imgclf card` writes it again)."""
    try:
        trainer.info("model card: %s", write_card(best_path))
    except Exception as e:
        trainer.run_dir.warning(
            "MODEL_CARD.md not written: %s: %s (write it with `imgclf card %s`)", type(e).__name__, e, best_path
        )
