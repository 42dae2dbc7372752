"""CIFAR-10 and CIFAR-100 by name, through torchvision's readers.

The batches live in a data root (`--data-root`, else $IMGCLF_DATA, else a user cache folder). When they are
absent, torchvision downloads them; offline, the error names the exact folder to put them in.
"""
from __future__ import annotations

import os
import pickle
import socket
import urllib.error

import numpy as np
from torchvision import datasets

from ..errors import DataError
from .sources import DataSource, Split


def _present(self) -> bool:
    # Existence only: torchvision's MD5 check of every batch costs a second a run and would refuse files in
    # the same format written by tests. A damaged file still fails loudly when it is unpickled.
    return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in self.train_list + self.test_list)


def _load_meta(self) -> None:
    path = os.path.join(self.root, self.base_folder, self.meta["filename"])
    if not os.path.isfile(path):
        raise DataError(f"CIFAR metadata file '{path}' is missing: put the complete {self.base_folder} folder there")
    with open(path, "rb") as f:
        self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR10(datasets.CIFAR10):
    _check_integrity = _present
    _load_meta = _load_meta


class _CIFAR100(datasets.CIFAR100):
    _check_integrity = _present
    _load_meta = _load_meta


READERS = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}


def cifar_source(name: str, root: str, *, download: bool = True) -> DataSource:
    cls = READERS[name]
    folder = os.path.join(root, cls.base_folder)
    probe = cls.__new__(cls)
    probe.root = root
    if not _present(probe):
        if not download:
            raise DataError(f"{name} is not in '{folder}': put the {cls.base_folder} folder (from {cls.url}) there")
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            os.makedirs(root, exist_ok=True)
            probe.download()
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(
                f"{name} is not in '{folder}' and could not be downloaded ({reason}): "
                f"put the {cls.base_folder} folder from {cls.url} in '{root}', or set --data-root / IMGCLF_DATA"
            ) from None
        finally:
            socket.setdefaulttimeout(old)
    try:
        train = cls(root, train=True)
        test = cls(root, train=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise DataError(f"{name} files in '{folder}' are damaged ({type(e).__name__}: {e}): delete the folder and download again") from None
    splits = {
        "train": Split("train", [int(t) for t in train.targets], arrays=np.ascontiguousarray(train.data),
                       ids=[f"{name}:train:{i}" for i in range(len(train.targets))]),
        "test": Split("test", [int(t) for t in test.targets], arrays=np.ascontiguousarray(test.data),
                      ids=[f"{name}:test:{i}" for i in range(len(test.targets))]),
    }
    return DataSource(name, folder, list(train.classes), splits)
