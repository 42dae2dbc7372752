"""Streaming prediction (`predict_files`), which scales: millions of files in bounded memory, written as it goes, resumable, sharded.

    imgclf predict best.pt photos/ --files-from list.txt --output preds.parquet [--resume]
    torchrun --standalone --nproc-per-node 2 -m imgclf predict best.pt --files-from list.txt --output preds.parquet

The inputs are one stream: the PATHs (folders walked lazily, in sorted order), then the lines of --files-from.
It is cut into chunks of `batch_size` consecutive entries; chunk i belongs to rank i % world, so every image is
computed in exactly the batch it would be in one process (the same values, bit for bit, on the same machine).

Each rank appends its rows, chunk by chunk, to its own work file in OUTPUT.parts/ (CSV and JSON lines: one file,
flushed per chunk; Parquet: a part file every `part_rows` rows, each written whole). Nothing is kept per result:
memory is two batches and one part. At the end rank 0 merges the ranks' rows in chunk order into OUTPUT (written
under a temporary name and renamed) and removes OUTPUT.parts. A run that is killed leaves OUTPUT.parts behind;
`resume=True` keeps the whole chunks there (a half-written last line is dropped) and predicts the rest, so every
path appears once. OUTPUT.parts/manifest.json records the command, so that a different one is not mixed in.

The package, in the order of a run: inputs.py (the entries and each rank's share), job.py (what one call will do,
checked up front, and its work folder's manifest), rows.py (a result as a CSV, JSON-lines or Parquet row),
work.py (one rank's work files, cut back to whole chunks on --resume), merge.py (the ranks' rows into OUTPUT) and
run.py (`predict_files`: the whole call, on every rank).
"""

from __future__ import annotations

from imgclf.infer.stream.run import predict_files

__all__ = ["predict_files"]
