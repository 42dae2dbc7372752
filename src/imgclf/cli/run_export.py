"""What `imgclf export` and `imgclf bench` run. Imported only when one of them runs (cli/commands.py)."""

from __future__ import annotations

import json
import os

import torch

from imgclf.cli.console import check_output_file
from imgclf.cli.export_options import BenchOptions, ExportOptions
from imgclf.compute.machine import git_commit
from imgclf.core.tracking import track_command
from imgclf.exporting.bench import bench, format_table, parse_batch_sizes
from imgclf.exporting.export import export, format_export_report
from imgclf.infer.runtime import open_model


def export_command(o: ExportOptions) -> int:
    if o.out:
        check_output_file(o.out, "--out")
    # these have their defaults in exporting/export.py (which imports torch): passed on only when given
    given = {
        k: getattr(o, k)
        for k in ("calib_images", "verify_images", "int8_tries", "int8_target")
        if getattr(o, k) is not None
    }
    r = export(
        o.weights,
        o.format,
        out=o.out,
        calib_data=o.calib_data,
        calib_method=o.calib_method,
        reduce_range=o.reduce_range,
        verify_data=o.verify_data,
        data=o.data,
        split=o.split,
        data_root=o.data_root,
        opset=o.opset,
        max_eval_images=o.max_eval_images,
        tta=o.tta,
        **given,
    )
    print(json.dumps(r, indent=2) if o.json else format_export_report(r))
    if o.track != "none":
        track_export(o, r)
    return 0


def track_export(o: ExportOptions, r: dict) -> None:
    """--track mlflow: the export as an MLflow run (its verification's numbers, the file itself), under the
    training run's when that was tracked; --register NAME: the exported file as a new version of NAME."""
    v = r["verification"]
    params = {"weights": o.weights, "format": r["format"], "out": r["out"], "tolerance": v.get("tolerance", {})}
    metrics = {"size_bytes": r["size_bytes"], "seconds": r["seconds"], "verification": v, "accuracy": r.get("accuracy")}
    tracker = track_command(
        o, "export", o.weights, params=params, metrics=metrics, files=[], commit=git_commit(os.getcwd())
    )
    tracker.log_artifact(r["out"], "model")
    tracker.log_dict(r, "export.json")
    if o.register:
        meta = open_model(r["out"], device="cpu").metadata()  # what the file itself says: classes, preprocessing
        tags = {
            "format": r["format"],
            "classes": json.dumps(meta["classes"]),
            "preprocess": json.dumps(meta["preprocess"]),
            "source": o.weights,
        }
        tracker.register(o.register, "model", tags)
    tracker.finish()


def bench_command(o: BenchOptions) -> int:
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    rows = bench(
        o.inputs,
        batch_sizes=parse_batch_sizes(o.batch_sizes),
        data=o.data,
        split=o.split,
        data_root=o.data_root,
        eager=[e.strip() for e in o.eager.split(",") if e.strip()],
        warmup=o.warmup,
        iters=o.iters,
        rounds=o.rounds,
        max_seconds=o.max_seconds,
        max_eval_images=o.max_eval_images,
        memory_check=o.memory_check,
    )
    print(json.dumps(rows, indent=2) if o.json else format_table(rows))
    return 0
