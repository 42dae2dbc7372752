"""CIFAR-10 and CIFAR-100 by name, through torchvision's readers.

The batches live in a data root (`--data-root`, else $IMGCLF_DATA, else a user cache folder). When they are
absent, they are downloaded (with a time limit of their own: the process's socket default is left alone),
checked against the MD5 torchvision records, and extracted by torchvision; offline, the error names the exact
folder to put them in. This module only reads: data/sources.py turns what it reads into a DataSource.

torchvision is imported when a CIFAR set is read, not with this module: `imgclf check` on a folder imports
data/sources.py, and with it this module, and stays free of torch.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import shutil
import urllib.error
import urllib.request

import numpy as np

from imgclf.core.errors import DataError
from imgclf.core.fileio import atomic_open

log = logging.getLogger(__name__)

# Seconds a download may wait for the server (to connect, then for each read) before it gives up: a closed
# network must fail in seconds, not hang.
DOWNLOAD_TIMEOUT = 30


def _present(self) -> bool:
    # Existence only: torchvision's MD5 check of every batch costs a second a run and would refuse files in
    # the same format written by tests. A damaged file still fails loudly when it is unpickled.
    return all(
        os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in self.train_list + self.test_list
    )


def _load_meta(self) -> None:
    path = os.path.join(self.root, self.base_folder, self.meta["filename"])
    if not os.path.isfile(path):
        raise DataError(f"CIFAR metadata file '{path}' is missing: put the complete {self.base_folder} folder there")
    with open(path, "rb") as f:
        self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


NAMES = ("cifar10", "cifar100")


@functools.cache
def reader(name: str) -> type:
    """torchvision's dataset class for `name` (one of NAMES), with our existence check and metadata reading;
    made once, on first use."""
    from torchvision import datasets  # noqa: PLC0415 - heavy (imports torch); only for a CIFAR set

    base = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    return type(f"_{base.__name__}", (base,), {"_check_integrity": _present, "_load_meta": _load_meta})


def read_cifar(name: str, root: str, *, download: bool = True) -> tuple[str, list[str], dict]:
    """(folder, class names, {"train" | "test": (labels, N x 32 x 32 x 3 uint8)}) of cifar10 or cifar100 in
    `root`, downloading them first when they are absent and `download` is on."""
    cls = reader(name)
    folder = os.path.join(root, cls.base_folder)
    probe = cls.__new__(cls)
    probe.root = root
    if not _present(probe):
        if not download:
            raise DataError(f"{name} is not in '{folder}': put the {cls.base_folder} folder (from {cls.url}) there")
        try:
            _download(cls, root)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(
                f"{name} is not in '{folder}' and could not be downloaded ({reason}): "
                f"put the {cls.base_folder} folder from {cls.url} in '{root}', or set --data-root / IMGCLF_DATA"
            ) from None
    try:
        train = cls(root, train=True)
        test = cls(root, train=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise DataError(
            f"{name} files in '{folder}' are damaged ({type(e).__name__}: {e}): delete the folder and download again"
        ) from None
    splits = {
        s: ([int(t) for t in d.targets], np.ascontiguousarray(d.data)) for s, d in (("train", train), ("test", test))
    }
    return folder, list(train.classes), splits


def _download(cls, root: str) -> None:
    """The archive into `root` (whole or not at all), checked against torchvision's MD5, then extracted there.
    An archive already there with the right MD5 is not fetched again."""
    # heavy (imports torch): only for a CIFAR set
    from torchvision.datasets.utils import USER_AGENT, check_integrity, extract_archive  # noqa: PLC0415

    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, cls.filename)
    if not check_integrity(archive, cls.tgz_md5):
        log.info("downloading %s to %s", cls.url, root)
        request = urllib.request.Request(cls.url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response, atomic_open(archive, "wb") as f:
            shutil.copyfileobj(response, f, 2**20)
        if not check_integrity(archive, cls.tgz_md5):
            os.unlink(archive)
            raise RuntimeError(f"the file downloaded from {cls.url} is damaged (its MD5 is not {cls.tgz_md5})")
    extract_archive(archive, root)
