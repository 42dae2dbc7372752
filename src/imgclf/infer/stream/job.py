"""What one `predict_files` call will do, checked before any work (`Job`): where the rows go, the manifest that
records the command in OUTPUT.parts/, and whether a stopped run of the same command is continued (--resume)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass

from imgclf.compute.distributed import World
from imgclf.core.errors import UsageError
from imgclf.core.fileio import remove_stale_temps, write_json
from imgclf.core.options import check_output_folder
from imgclf.infer.stream.inputs import Inputs
from imgclf.infer.stream.merge import merge
from imgclf.infer.stream.rows import SINGLE_LAYOUT, Layout
from imgclf.infer.stream.work import LineWork, NoWork, ParquetWork

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: the rows gained "unsure" (--min-confidence); a stopped run of another version is refused

KINDS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def output_kind(out: str) -> str:
    kind = KINDS.get(os.path.splitext(out)[1].lower())
    if kind is None:
        raise UsageError(f"--output '{out}' must end in .csv or .json (an array), .jsonl (JSON lines) or .parquet")
    return kind


@dataclass
class Job:
    """What one `predict_files` call will do, checked before any work: where the rows go and what to resume."""

    inputs: Inputs
    out: str | None
    kind: str | None
    manifest: dict
    world: World
    resume: bool  # an earlier run's rows are in `parts` and are kept
    finished: bool = False  # --resume of a run that finished: OUTPUT is there whole, nothing to do
    layout: Layout = SINGLE_LAYOUT  # the model's columns (rows.py), set once the model is open (`use_layout`)

    COMMAND = "predict"  # the command whose stopped runs this job continues (infer/embed.py's EmbedJob: embed)
    # what --resume compares between the stopped run's manifest and this one: (key, how the user names it)
    SAME = (
        ("weights", "weights"),
        ("inputs", "PATHs"),
        ("files_from", "--files-from"),
        ("stdin", "--files-from -"),
        ("batch_size", "--batch-size"),
        ("top_k", "--top-k"),
        ("tta", "--tta"),
        ("min_confidence", "--min-confidence"),
        ("threshold", "--threshold"),
        ("reject", "--reject"),
        ("ood_score", "--ood-score"),
        ("world_size", "number of processes"),
    )

    @property
    def parts(self) -> str:
        return self.out + ".parts"

    @classmethod
    def plan(
        cls,
        weights,
        inputs: Inputs,
        out,
        *,
        batch_size,
        top_k,
        resume,
        world,
        tta=None,
        min_confidence=None,
        threshold=None,
        reject=None,
        ood_score=None,
    ) -> Job:
        if int(top_k) < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        if world.distributed and out is None:
            raise UsageError("under torchrun predict needs --output FILE: each rank writes its share into it")
        if world.distributed and inputs.files_from == "-":
            raise UsageError("under torchrun every rank reads the list: give --files-from a file, not -")
        if out is None and resume:
            raise UsageError("--resume continues an --output file: give the same --output as the run to resume")
        kind = output_kind(out) if out is not None else None
        inputs.check()
        if out is not None:
            check_output_place(out)
        entries, digest = inputs.survey()
        weights_name = weights if isinstance(weights, str | os.PathLike) else getattr(weights.runner, "path", "")
        manifest = {
            "version": MANIFEST_VERSION,
            "weights": os.path.abspath(str(weights_name)),
            "inputs": [os.path.abspath(p) for p in inputs.paths],
            "files_from": None if inputs.files_from in (None, "-") else os.path.abspath(inputs.files_from),
            "stdin": inputs.files_from == "-",
            "batch_size": batch_size,
            "top_k": int(top_k),
            "tta": tta,
            "min_confidence": min_confidence,
            "threshold": threshold,
            "reject": reject,
            "ood_score": ood_score,
            "world_size": world.size,
            "entries": entries,
            "digest": digest,
        }
        job = cls(inputs, out, kind, manifest, world, resume=False)
        if out is not None:
            job.resume = job._check_existing(resume)
        return job

    def _check_existing(self, resume: bool) -> bool:
        """Whether there is a stopped run to continue; refuses what cannot be continued or would be lost."""
        out, parts = self.out, self.parts
        if not resume:
            if os.path.exists(parts):
                raise UsageError(
                    f"'{parts}' holds the rows of an earlier run that was stopped: pass --resume to continue it, "
                    f"or remove it{' and ' + repr(out) if os.path.exists(out) else ''} to start again"
                )
            if os.path.exists(out):
                raise UsageError(f"--output '{out}' exists: remove it, or write to another file")
            return False
        if not os.path.exists(parts):
            # a finished run (a retry loop's last try succeeded): nothing to do, and OUTPUT is left as it is
            self.finished = os.path.exists(out)
            if self.finished:
                return False
            log.info("nothing to resume in %s: starting from the first image", parts)
            return False
        self._check_manifest()
        return True

    def _check_manifest(self) -> None:
        parts = self.parts
        try:
            with open(os.path.join(parts, MANIFEST), encoding="utf-8") as f:
                before = json.load(f)
        except (OSError, ValueError):
            raise UsageError(
                f"--resume: '{parts}' is not a stopped imgclf {self.COMMAND} run (no {MANIFEST}): remove it"
            ) from None
        now = self.manifest
        if before.get("command", "predict") != self.COMMAND:
            raise UsageError(
                f"--resume: '{parts}' holds a stopped imgclf {before.get('command', 'predict')} run, not "
                f"{self.COMMAND}: give another --output, or remove '{parts}' to start again"
            )
        if before.get("version") != now["version"]:
            raise UsageError(
                f"--resume: '{parts}' was written by another version of imgclf {self.COMMAND} (its rows have other "
                f"columns: work files version {before.get('version')}, this one {now['version']}): remove it to start again"
            )
        for key, what in self.SAME:
            if before.get(key) != now[key]:
                raise UsageError(
                    f"--resume: the stopped run in '{parts}' had {what} {before.get(key)}, this one {now[key]}: "
                    f"resume with the same command, or remove '{parts}' to start again"
                )
        if before.get("digest") != now["digest"]:
            raise UsageError(
                f"--resume: the images listed changed since the run in '{parts}' ({before.get('entries')} entries "
                f"then, {now['entries']} now): resume with the same list, or remove '{parts}' to start again"
            )

    def use_layout(self, layout: Layout) -> None:
        """Every rank, once the model is open and before any row is written: its columns, recorded in the manifest;
        a stopped run whose rows have other columns (a single-label run resumed with a multi-label model written
        to the same path, or a model with other labels) is refused rather than mixed in."""
        self.layout = layout
        self.manifest["columns"] = list(layout.header)
        if not self.resume:
            return
        with open(os.path.join(self.parts, MANIFEST), encoding="utf-8") as f:
            before = json.load(f).get("columns", list(SINGLE_LAYOUT.header))  # written before multi-label rows
        if before != self.manifest["columns"]:
            raise UsageError(
                f"--resume: the stopped run in '{self.parts}' wrote the columns {', '.join(before)[:200]}, this model's "
                f"are {', '.join(self.manifest['columns'])[:200]} (the model file changed since): remove "
                f"'{self.parts}' to start again"
            )

    def prepare(self) -> None:
        """Rank 0, after every rank has passed `plan`: the work folder and its manifest."""
        if self.out is None:
            return
        os.makedirs(self.parts, exist_ok=True)
        remove_stale_temps(self.parts)
        if not self.resume:
            write_json(self.manifest, os.path.join(self.parts, MANIFEST))

    def work(self, part_rows: int):
        if self.out is None:
            return NoWork()
        if self.kind == "parquet":
            return ParquetWork(self.parts, self.world.rank, part_rows, self.layout)
        return LineWork(self.parts, self.world.rank, quoted=self.kind == "csv", layout=self.layout)

    def finish(self, work, sizes: list[int], *, part_rows: int, partial: bool = False) -> None:
        """Rank 0: OUTPUT from the ranks' rows; the work folder removed unless the run is `partial` (stopped)."""
        batch_size = self.manifest["batch_size"]
        if isinstance(work, LineWork) and self.kind != "json" and len(sizes) == 1 and not partial:
            os.replace(work.path, self.out)  # already in order and flushed to disk: no copy of a big file
        else:
            merge(self.parts, self.kind, sizes, batch_size, self.out, part_rows=part_rows, layout=self.layout)
        if not partial:
            shutil.rmtree(self.parts)


def check_output_place(out: str) -> None:
    if os.path.isdir(out):
        raise UsageError(f"--output '{out}' is a folder: give a file name")
    check_output_folder(os.path.dirname(os.path.abspath(out)), "--output")
