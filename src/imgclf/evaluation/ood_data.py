"""The folder `imgclf evaluate --ood-data DIR` names, checked before any work: torch-free, so that the CLI checks it
before `--nproc` starts its ranks (one line, not one per rank) and `evaluate()` before it opens the model."""

from __future__ import annotations

import os

from imgclf.core.errors import UsageError
from imgclf.data.sources import IMAGE_EXTENSIONS, is_image_name

FLAG = "--ood-data"


def check_ood_folder(folder) -> str:
    """`folder` as an absolute path when it is a folder holding at least one image file (at any depth; hidden
    names and links to folders left out, as `imgclf predict` walks a folder); else one UsageError line."""
    folder = str(folder)
    if not os.path.isdir(folder):
        what = "does not exist" if not os.path.exists(folder) else "is not a folder"
        raise UsageError(
            f"{FLAG} '{folder}' {what}: pass a folder of images the model was never trained on (any layout)"
        )
    if not has_image_file(folder):
        raise UsageError(
            f"{FLAG} '{folder}' holds no image files ({', '.join(IMAGE_EXTENSIONS[:3])}, ...): pass a folder of "
            "images the model was never trained on (any layout)"
        )
    return os.path.abspath(folder)


def has_image_file(folder: str) -> bool:
    """Whether an image file lies under `folder`, found without listing the whole tree where one comes early."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d))]
        if any(is_image_name(f) and not f.startswith(".") for f in files):
            return True
    return False
