"""What `imgclf predict`, `select` and `active-sim` run: each calls its API function and prints the result.
Imported only when one of them runs (cli/commands.py)."""

from __future__ import annotations

import json
import logging

from imgclf.cli.console import EXIT_BROKEN_PIPE, Stdout, check_failures, check_output_file, said_finished
from imgclf.cli.options import ActiveSimOptions, PredictOptions, SelectOptions
from imgclf.compute.distributed import world_from_env
from imgclf.core.errors import UsageError
from imgclf.core.escape import one_line
from imgclf.evaluation.multilabel import parse_goal
from imgclf.infer.stream import predict_files
from imgclf.studies.active import format_selection, format_simulation, select, simulate

log = logging.getLogger(__name__)


def predict_command(o: PredictOptions) -> int:
    threshold = global_threshold(o.threshold)
    if o.output:
        check_output_file(o.output, "--output")
    stdout = Stdout(keep_going=bool(o.output))  # with --output, a closed stdout (`| head`) does not stop the file
    # under torchrun the rows go to the merged --output only: two ranks' lines on one stdout would interleave
    printing = not world_from_env().distributed
    r = predict_files(
        o.weights,
        o.paths,
        o.output,
        files_from=o.files_from,
        top_k=o.top_k,
        batch_size=o.batch_size,
        device=o.device,
        precision=o.precision,
        resume=o.resume,
        part_rows=o.part_rows,
        tta=o.tta,
        min_confidence=o.min_confidence,
        threshold=threshold,
        reject=o.reject,
        ood_score=o.ood_score,
        on_row=(lambda row: stdout.print(prediction_line(row, o.json))) if printing else None,
    )
    if r.get("finished"):
        if world_from_env().main:
            said_finished(o.output, "predict")
        return 0
    check_failures(r["errors"], r["predicted"], log, "each one's error is listed above")
    return EXIT_BROKEN_PIPE if stdout.closed else 0


def global_threshold(text: str | None) -> float | None:
    """predict's --threshold: the global form of `parse_goal` (one number for every label); the goals fitted on
    labelled data (f1, precision=P, recall=R) are refused in one line that says where they belong."""
    if text is None:
        return None
    try:
        goal = parse_goal(text)
    except UsageError:
        goal = None
    if goal is None or goal.kind != "global":
        raise UsageError(
            f"--threshold {str(text)[:20]}: predict takes one number from 0 to 1 for every label (e.g. 0.5); the "
            "goals f1, precision=P and recall=R are fitted on labelled data: refit the model's thresholds with "
            "imgclf calibrate"
        )
    return goal.value


def prediction_line(r: dict, as_json: bool) -> str:
    """One row of `imgclf predict`'s stdout: PATH, label (or unsure, or unknown), probability and the other top
    labels (a multi-label model: PATH, the label set joined by | or - for none, every label's score); with --reject
    ood, the score last ("energy -7.210 <= -5.003", "knn 1.230 > 0.910": above its threshold, unknown); the path,
    labels and error escaped (`one_line`), so a name holding a newline, tab or NUL stays one row."""
    if as_json:
        return json.dumps(r)
    path = one_line(r["path"])
    if "error" in r:
        return f"{path}\tERROR\t{one_line(r['error'])}"
    ood = ""
    if "ood" in r:
        o = r["ood"]
        ood = f"\t{o['score']} {o['value']:.3f} {'>' if r['unknown'] else '<='} {o['threshold']:.3f}"
    if "labels" in r:  # a multi-label model: the set ("-" for none of them), then every label's score
        scores = ", ".join(f"{one_line(c)} {p:.3f}" for c, p in r["scores"].items())
        shown = "unknown" if r.get("unknown") else "|".join(one_line(c) for c in r["labels"]) or "-"
        return f"{path}\t{shown}\t({scores}){ood}"
    others = ", ".join(f"{one_line(t['label'])} {t['probability']:.3f}" for t in r["top_k"][1:])
    top = one_line(r["top_k"][0]["label"])
    shown = one_line(r["label"])
    if r.get("unknown"):  # before unsure: unlike the training data, whatever the probability says
        shown = f"unknown ({top})"
    elif r.get("unsure"):
        shown = f"unsure ({top})"
    return f"{path}\t{shown}\t{r['probability']:.3f}" + (f"\t({others})" if others else "") + ood


def select_command(o: SelectOptions) -> int:
    sel = select(
        o.weights,
        o.pool,
        budget=o.budget,
        strategy=o.strategy,
        exclude=o.exclude,
        out=o.out,
        seed=o.seed,
        device=o.device,
        precision=o.precision,
        batch_size=o.batch_size,
    )
    print(format_selection(sel))
    return 0


def active_sim_command(o: ActiveSimOptions) -> int:
    res = simulate(
        o.data,
        strategies=o.strategies,
        start=o.start,
        budget=o.budget,
        rounds=o.rounds,
        seeds=o.seeds,
        features=o.features,
        img_size=o.img_size,
        pool_size=o.pool_size,
        eval_size=o.eval_size,
        eval_split=o.eval_split,
        start_mode=o.start_mode,
        out=o.out,
        seed=o.seed,
        device=o.device,
        batch_size=o.batch_size,
        data_root=o.data_root,
    )
    if o.json:
        print(json.dumps({"setup": res.setup, "summary": res.summary, "versus_random": res.versus_random}, indent=2))
    else:
        print(format_simulation(res))
    return 0
