"""What `imgclf export` and `imgclf bench` run. Imported only when one of them runs (cli/commands.py)."""

from __future__ import annotations

import json

import torch

from imgclf.cli.console import check_output_file
from imgclf.cli.export_options import BenchOptions, ExportOptions
from imgclf.exporting.bench import bench, format_table, parse_batch_sizes
from imgclf.exporting.export import export, format_export_report


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
    return 0


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
