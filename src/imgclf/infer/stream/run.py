"""`predict_files`: one streaming prediction, on every rank: the job checked, the Predictor opened, this rank's
share predicted chunk by chunk into its work file, and rank 0's merge (see the package's docstring)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
from dataclasses import dataclass

from imgclf.compute.device import resolve_device
from imgclf.compute.distributed import barrier, gather, setup, world_from_env
from imgclf.core.confidence import check_min_confidence
from imgclf.core.errors import UsageError
from imgclf.core.progress import progress, shown
from imgclf.infer.predict import Predictor, check_threshold
from imgclf.infer.stream.inputs import Inputs, shard, shard_rows
from imgclf.infer.stream.job import Job
from imgclf.infer.stream.rows import Layout, layout_for
from imgclf.models.tta import check_mode

log = logging.getLogger(__name__)

# Seconds a rank waits for the others at the end (all ranks' shards finished before rank 0 merges); the shards
# differ by at most one batch, so this only runs out when a rank is stuck, and torchrun stops the others itself
# when a rank dies.
DEFAULT_TIMEOUT = 1800.0
PART_ROWS = 10_000  # Parquet rows per part file: ~1 MB of results held at most before they are on disk
LOG_EVERY = 1000  # images between progress lines when stderr is not a terminal


def predict_files(
    weights,
    inputs=(),
    output: str | None = None,
    *,
    files_from: str | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    part_rows: int = PART_ROWS,
    on_row=None,
    timeout: float = DEFAULT_TIMEOUT,
    tta: str | None = None,
    min_confidence: float | None = None,
    threshold: float | None = None,
    reject: str | None = None,
    ood_score: str | None = None,
) -> dict:
    """Predict every image of `inputs` (files and folders) and of the list `files_from`, writing each batch's rows
    to `output` (.csv, .jsonl, .json or .parquet) as it finishes; see the module's docstring.

    `weights`: a checkpoint or exported model (or a Predictor). `resume`: keep the rows a stopped run of the same
    call wrote and predict the rest. `on_row(result)`: called with each new result (the dicts of
    Predictor.predict) in this process. Under torchrun each rank predicts its share and rank 0 merges them.
    `tta`, `min_confidence`, `threshold`, `reject`, `ood_score`: as Predictor's (a Predictor passed as `weights`
    keeps its own); with `reject` the rows gain "unknown" and the score (rows.py).
    Returns {"output", "entries", "rows", "predicted", "errors", "resumed"}; the counts are over all ranks. With
    `resume` and an OUTPUT that is finished (no OUTPUT.parts of a stopped run), nothing is done: "finished": True."""
    # the Predictor's options, checked before any work; the manifest records them for --resume
    chosen = dict(tta=check_mode(tta), min_confidence=check_min_confidence(min_confidence))
    chosen["threshold"] = check_threshold(threshold)
    chosen.update(reject=reject, ood_score=ood_score)  # checked against the model's record when it opens
    world = world_from_env()
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    inp = Inputs(tuple(str(p) for p in inputs), None if files_from is None else str(files_from))
    out = None if output is None else str(output)
    if int(batch_size) < 1 or int(part_rows) < 1:
        raise UsageError(f"batch_size and part_rows must be at least 1, got {batch_size} and {part_rows}")
    job = Job.plan(weights, inp, out, batch_size=int(batch_size), top_k=top_k, resume=resume, world=world, **chosen)
    if job.finished:  # --resume of a finished run: a no-op, so that a retry loop may run it again
        return {**summary(job, [(0, 0, 0, 0)]), "finished": True}
    with setup(resolve_device(device), timeout) as dev:
        predictor = open_predictor(weights, str(dev), int(batch_size), precision=precision, workers=workers, **chosen)
        counts = predict_shares(job, predictor, top_k=top_k, part_rows=int(part_rows), on_row=on_row)
    return summary(job, counts)


def summary(job: Job, counts: list[tuple]) -> dict:
    """What `predict_files` returns, from every rank's (rows, predicted, errors, resumed)."""
    rows, predicted, errors, resumed = (sum(c[i] for c in counts) for i in range(4))
    if job.out is not None and not rows and not job.finished:
        log.warning("no image paths came in: %s has no rows", job.out)
    return {
        "output": job.out,
        "entries": job.manifest["entries"],
        "rows": rows,
        "predicted": predicted,
        "errors": errors,
        "resumed": resumed,
    }


def open_predictor(weights, device: str, batch_size: int, **options) -> Predictor:
    """A Predictor for `weights` on `device` (`options`: Predictor's), or a copy of the Predictor given with
    `batch_size` (the caller's keeps its own, and its options)."""
    if isinstance(weights, Predictor):
        predictor = copy.copy(weights)
        predictor.batch_size = batch_size
        return predictor
    return Predictor(str(weights), device=device, batch_size=batch_size, **options)


def predict_shares(
    job: Job, predictor: Predictor, *, top_k: int, part_rows: int, on_row, layout: Layout | None = None
) -> list[tuple]:
    """Every rank's share predicted into its work file and, on rank 0, OUTPUT merged from them; each rank's
    (rows, predicted, errors, resumed). `layout`: the rows' columns (default: the predictor's model's; embed
    passes its embedding rows')."""
    world = job.world
    if job.out is not None:
        job.use_layout(layout or layout_for(predictor.task, predictor.classes, ood=predictor.ood_score is not None))
    barrier(world)  # every rank has checked the output before rank 0 creates anything
    if world.main:
        job.prepare()
    barrier(world)
    with contextlib.nullcontext() if world.main else shown(False):  # one bar, rank 0's
        work, done = predict_share(job, predictor, top_k=top_k, part_rows=part_rows, on_row=on_row)
    counts = gather((work.rows, done.predicted, done.errors, done.resumed), world)
    if world.main and job.out is not None:
        job.finish(work, [c[0] for c in counts], part_rows=part_rows)
    barrier(world)  # no rank reports success before the merged file is there
    return counts


@dataclass
class Done:
    """What one rank did: results predicted in this run (`errors` of them unreadable files) and rows kept from
    a stopped run."""

    predicted: int = 0
    errors: int = 0
    resumed: int = 0


def predict_share(job: Job, predictor: Predictor, *, top_k: int, part_rows: int, on_row) -> tuple[object, Done]:
    """This rank's share, appended to its work file chunk by chunk; (the work, the counts)."""
    batch_size, world = job.manifest["batch_size"], job.world
    work = job.work(part_rows)
    kept = work.keep_whole_chunks(batch_size)
    if kept:
        log.info(
            "resuming %s: %d rows kept from the stopped run%s",
            job.out,
            kept,
            f" (rank {world.rank})" if world.distributed else "",
        )
    work.open()
    entries = job.manifest["entries"]
    todo = None if entries is None else shard_rows(entries, batch_size, world) - kept
    done = Done(resumed=kept)
    mine = itertools.islice(shard(job.inputs, batch_size, world), kept, None)
    desc = job.COMMAND + (f" (rank 0 of {world.size})" if world.distributed else "")
    chunk: list[dict] = []
    try:
        rows = predictor.predict_iter(mine, top_k=top_k)
        for r in progress(rows, total=todo, desc=desc, unit="img", log_every=LOG_EVERY):
            chunk.append(r)
            done.predicted += 1
            done.errors += "error" in r
            if on_row is not None:
                on_row(r)
            if len(chunk) == batch_size:
                work.add_chunk(chunk)
                chunk = []
        if chunk:  # the input's last, short chunk
            work.add_chunk(chunk)
        work.close()
    except BaseException:
        stopped(job, work, part_rows)
        raise
    return work, done


def stopped(job: Job, work, part_rows: int) -> None:
    """An error, Ctrl-C or SIGTERM stopped the run: keep the whole chunks done, in OUTPUT.parts for --resume and,
    in one process, as OUTPUT too (what was done is usable now)."""
    try:
        work.close()
    except Exception as e:  # the error that stopped the run is the one to report
        log.debug("closing the rows of the stopped run: %s", e)
    if job.out is None or not work.rows:
        return
    entries = job.manifest["entries"]
    of = f" of {shard_rows(entries, job.manifest['batch_size'], job.world)}" if entries is not None else ""
    where = job.parts
    if not job.world.distributed:
        try:
            job.finish(work, [work.rows], part_rows=part_rows, partial=True)
            where = job.out
        except Exception as e:
            log.debug("writing %s from the stopped run: %s", job.out, e)
    log.warning(
        "stopped after %d%s images%s: %s holds those %d; run the same command with --resume to %s the rest",
        work.rows,
        of,
        f" (rank {job.world.rank})" if job.world.distributed else "",
        where,
        work.rows,
        job.COMMAND,
    )
