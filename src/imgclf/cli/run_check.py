"""What `imgclf check` runs. A module of its own because it imports no torch: checking a data folder needs only
Pillow, and `imgclf check` stays as light as `imgclf --help` (tests/unit/cli checks both)."""

from __future__ import annotations

import json
import sys

from imgclf.cli.options import CheckOptions
from imgclf.data.check import check_data


def check_command(o: CheckOptions) -> int:
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
