"""Write a few images of a split to a folder, so that built-in data (digits, cifar10) can be fed to `predict`
like any folder of files."""

from __future__ import annotations

import os
import shutil

from PIL import Image

from imgclf.data.sources import open_source


def save_samples(
    data: str,
    out: str,
    *,
    split: str = "val",
    n: int = 10,
    data_root: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[str]:
    """Save `n` images of `split`, taken round-robin over the classes, as OUT/CLASS/NAME. Returns the paths."""
    src = open_source(data, data_root=data_root, val_fraction=val_fraction, seed=seed)
    s = src.split(split)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(s.labels):
        by_class.setdefault(y, []).append(i)
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(v) for v in by_class.values()):
        picked += [v[depth] for _, v in sorted(by_class.items()) if depth < len(v)]
        depth += 1
    written = []
    for i in picked[:n]:
        folder = os.path.join(out, src.classes[s.labels[i]])
        os.makedirs(folder, exist_ok=True)
        if s.paths is not None:
            dst = os.path.join(folder, os.path.basename(s.paths[i]))
            shutil.copyfile(s.paths[i], dst)
        else:
            dst = os.path.join(folder, s.describe(i).replace(":", "_") + ".png")
            Image.fromarray(s.arrays[i]).save(dst)
        written.append(dst)
    return written
