"""What `imgclf check` runs. A module of its own because it imports no torch: checking a data folder needs only
Pillow, and `imgclf check` stays as light as `imgclf --help` (tests/unit/cli checks both). `--deep` runs
studies/audit/deep.py, imported only then."""

from __future__ import annotations

import json
import sys

from imgclf.cli.options import CheckOptions
from imgclf.core.errors import UsageError
from imgclf.core.lazy import Named
from imgclf.data.check import check_data

DEEP_CHECK = Named("imgclf.studies.audit.deep:deep_check")
_DEEP_ONLY = ("model", "folds", "out", "fixes", "batch_size")


def check_command(o: CheckOptions) -> int:
    if o.deep:
        return _deep(o)
    given = [f"--{k.replace('_', '-')}" for k in _DEEP_ONLY if getattr(o, k) is not None]
    given += ["--device"] * (o.device != "auto")
    if given:
        raise UsageError(f"{', '.join(given)} only work{'s' * (len(given) == 1)} with --deep: add --deep or drop it")
    report = check_data(
        o.data,
        workers=o.workers,
        progress=not o.quiet and sys.stderr.isatty(),
        fixes=o.apply_fixes,
        group_by=o.group_by,
        data_root=o.data_root,
    )
    print(json.dumps(report.to_dict(), indent=2) if o.json else report.format_text())
    return 0 if report.ok else 1


def _deep(o: CheckOptions) -> int:
    kw = {k: getattr(o, k) for k in _DEEP_ONLY if getattr(o, k) is not None}
    # the plain check's own options: --group-by's leaks, --apply-fixes, --data-root
    kw.update(group_by=o.group_by, apply_fixes=o.apply_fixes, data_root=o.data_root)
    res = DEEP_CHECK(o.data, device=o.device, workers=o.workers, progress=not o.quiet and sys.stderr.isatty(), **kw)
    print(json.dumps(res.report.to_dict(), indent=2) if o.json else res.format_text())
    return 0 if res.report.ok else 1
