"""A function named by "package.module:function" and imported when first called: the export table's writers and
openers (core/formats.py) and the CLI's commands (cli/commands.py) are named this way, so that the tables and
`imgclf --help` stay free of torch, and a command's modules are imported only when it runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Named:
    """The function "package.module:function", imported when first called."""

    ref: str

    def __call__(self, *args, **kwargs):
        module, name = self.ref.split(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
