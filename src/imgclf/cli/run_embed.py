"""What `imgclf embed` and `imgclf similar` run: each calls its API function (infer/embed.py, studies/similar.py)
and prints the result. Imported only when one of them runs (cli/commands.py)."""

from __future__ import annotations

import json
import logging

from imgclf.cli.console import EXIT_BROKEN_PIPE, Stdout, check_failures, check_output_file, said_finished
from imgclf.cli.embed_options import EmbedOptions, SimilarOptions
from imgclf.compute.distributed import world_from_env
from imgclf.core.errors import ImgclfError
from imgclf.core.escape import one_line
from imgclf.infer.embed import embed
from imgclf.studies.similar import similar

log = logging.getLogger(__name__)


def embed_command(o: EmbedOptions) -> int:
    check_output_file(o.output, "--output")
    r = embed(
        o.weights,
        o.paths,
        o.output,
        files_from=o.files_from,
        batch_size=o.batch_size,
        device=o.device,
        precision=o.precision,
        data_root=o.data_root,
        resume=o.resume,
        part_rows=o.part_rows,
    )
    if not world_from_env().main:
        return 0
    if r.get("finished"):
        said_finished(o.output, "embed")
        return 0
    check_failures(r["errors"], r["embedded"], log, f"{o.output} lists each error")
    kept = f", {r['resumed']} kept from the stopped run" if r["resumed"] else ""
    print(f"{r['rows']} rows ({r['dim']} features each{kept}) in {r['output']}")
    return 0


def similar_command(o: SimilarOptions) -> int:
    answers = similar(
        o.weights,
        o.images,
        index=o.index,
        k=o.k,
        sheet=o.sheet,
        device=o.device,
        precision=o.precision,
        batch_size=o.batch_size,
    )
    stdout = Stdout(keep_going=False)
    for a in answers:
        stdout.print(json.dumps(a) if o.json else similar_lines(a))
    failed = sum("error" in a for a in answers)
    if failed == len(answers):
        raise ImgclfError(f"none of the {failed} query images could be read or processed (each error is listed above)")
    if failed:
        log.warning("%d of %d query images could not be read or processed", failed, len(answers))
    if o.sheet:
        log.info("contact sheet: %s", o.sheet)
    return EXIT_BROKEN_PIPE if stdout.closed else 0


def similar_lines(a: dict) -> str:
    """One query's answer on the terminal: its path, then a line per neighbour (rank, distance, label, split,
    path), the user's strings escaped (`one_line`); an unreadable query: PATH, ERROR and why."""
    path = one_line(a["path"])
    if "error" in a:
        return f"{path}\tERROR\t{one_line(a['error'])}"
    lines = [path]
    for n in a["neighbours"]:
        label = "-" if n["label"] is None else one_line(n["label"])
        split = "-" if n["split"] is None else one_line(n["split"])
        lines.append(f"  {n['rank']:>3}  {n['distance']:.4f}  {label}\t{split}\t{one_line(n['path'])}")
    return "\n".join(lines)
