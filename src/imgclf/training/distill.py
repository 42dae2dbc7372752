"""Knowledge distillation (`--teacher`): the teacher opened and checked before any work, its logits in the data's
class order from the student's own batches, and the loss (Hinton, Vinyals and Dean 2015):

    (1 - A) x the usual loss  +  A x T^2 x KL(softmax(teacher / T) || softmax(student / T))

A teacher is an imgclf checkpoint, an export that gives logits (ONNX, TorchScript, pt2, dynamic-int8: anything
`infer.runtime.open_model` opens), or `timm:NAME` (timm's pretrained ImageNet model, whose 1000 classes are
ImageNet's synsets, n01440764, ..., or their descriptions). Its class names must be the data's: another order is
mapped by name, other classes are refused in one line. It sees the student's batch (augmented, mixed) as the
student does, brought to its own preprocessing: the student's normalisation undone, resized to the teacher's
input size (bilinear, antialiased), normalised as the teacher was. A checkpoint runs in fp32 without test-time
augmentation, with its calibrated temperature if it has one (that is what its probabilities are). Multi-label
runs are refused (their sigmoid targets are not a softmax). The callback is training/callbacks/distill.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.core.artifact import Preprocess
from imgclf.core.errors import UsageError
from imgclf.core.multilabel import MULTILABEL
from imgclf.data.pipeline import resolve_preprocess
from imgclf.infer.runtime import CheckpointRunner, open_model
from imgclf.models.registry import build_model, get_spec

TIMM = "timm:"


def distill_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (T^2 keeps the gradients'
    scale independent of T: Hinton et al. 2015, section 2)."""
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student.float() / t, 1),
            F.log_softmax(teacher.float() / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


class DistillLoss(nn.Module):
    """The usual loss `base(out, y)` and the teacher's term on the logits of the batch the callback set
    (`teacher_logits`, N x C in the data's class order)."""

    def __init__(self, base, weight: float, temperature: float):
        super().__init__()
        self.base, self.weight, self.temperature = base, float(weight), float(temperature)
        self.multilabel = getattr(base, "multilabel", False)
        self.teacher_logits: torch.Tensor | None = None

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher_logits is None or len(self.teacher_logits) != len(out):
            raise RuntimeError("DistillLoss: no teacher logits for this batch (the Distillation callback sets them)")
        usual = self.base(out, y)
        return (1 - self.weight) * usual + self.weight * distill_term(out, self.teacher_logits, self.temperature)


@dataclass
class Teacher:
    """An opened teacher: `logits(x)` of a batch prepared for the student (on the student's device)."""

    source: str  # what --teacher said
    name: str  # the model: its checkpoint's or export's model name, or timm:NAME
    format: str  # checkpoint, an export format, or timm
    digest: str | None  # the file's sha256 (None for timm: its weights are timm's)
    size_bytes: int | None
    classes: list[str]
    order: list[int] | None  # the teacher's logit columns in the data's class order (None: the same order)
    preprocess: Preprocess  # the teacher's own
    run: Callable[[torch.Tensor], torch.Tensor]  # its logits of a batch in its own preprocessing
    device: torch.device | None = None  # where `run` takes its input (None: anywhere; an export's runner: the CPU)
    adapt: Callable[[torch.Tensor], torch.Tensor] | None = None  # the student's batch to the teacher's (set later)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (float32, the data's class order) of `x`, on `x`'s device."""
        where = x.device
        x = x.to(self.device) if self.device is not None else x
        x = self.adapt(x) if self.adapt is not None else x
        out = self.run(x).float().to(where)
        return out if self.order is None else out[:, self.order]

    def record(self, weight: float, temperature: float) -> dict:
        """What results.json says of the teacher."""
        return {
            "source": self.source,
            "model": self.name,
            "format": self.format,
            "sha256": self.digest,
            "size_mb": None if self.size_bytes is None else round(self.size_bytes / 2**20, 2),
            "classes_mapped": self.order is not None,
            "weight": weight,
            "temperature": temperature,
            "preprocess": self.preprocess.to_dict(),
        }


def open_teacher(cfg, classes: list[str], student: Preprocess, device) -> Teacher:
    """The teacher --teacher names, on `device`, its classes checked against the data's `classes` (refused in one
    line, before anything is decoded), adapted to the student's preprocessing."""
    if cfg.task == MULTILABEL:
        raise UsageError(
            "--teacher: distillation is for single-label runs (a softmax over classes); this run is multi-label: "
            "drop --teacher"
        )
    source = str(cfg.teacher)
    teacher = _open_timm(source, classes, device) if source.startswith(TIMM) else _open_file(source, classes, device)
    teacher.adapt = adapter(student, teacher.preprocess)
    return teacher


def _open_file(path: str, classes: list[str], device) -> Teacher:
    if not os.path.exists(path):
        raise UsageError(
            f"--teacher '{path}' does not exist: give an imgclf checkpoint (best.pt), an export, or timm:NAME"
        )
    runner = open_model(path, device=str(device), precision="fp32", tta="none")
    if runner.task == MULTILABEL:
        raise UsageError(f"--teacher '{path}' is a multi-label model: a teacher gives one softmax over the classes")
    order = class_order(runner.classes, classes, path)
    if isinstance(runner, CheckpointRunner):  # on the student's device, without the round trip through the CPU
        run, where = runner.net.eval(), runner.device
    else:  # an export's runner takes CPU tensors (onnxruntime, TorchScript and pt2 as exported)
        run, where = runner.logits, torch.device("cpu")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return Teacher(
        path,
        runner.model_name,
        runner.format,
        digest,
        os.path.getsize(path),
        list(runner.classes),
        order,
        runner.preprocess,
        run,
        where,
    )


def _open_timm(source: str, classes: list[str], device) -> Teacher:
    spec = get_spec(source)  # timm missing, or an unknown name: one line
    from timm.data import ImageNetInfo  # noqa: PLC0415 - an optional extra (get_spec above has checked it is there)

    info = ImageNetInfo()
    synsets, words = list(info.label_names()), list(info.label_descriptions())
    names = words if set(classes) <= set(words) and not set(classes) <= set(synsets) else synsets
    order = class_order(names, classes, source)
    model = build_model(source, len(names), pretrained=True).to(device).eval()
    prep = resolve_preprocess(spec, img_size=None, pretrained=True, own_size=None)
    return Teacher(source, source, "timm", None, None, names, order, prep, model, torch.device(device))


def class_order(teacher: list[str], data: list[str], source: str) -> list[int] | None:
    """The teacher's logit columns in the data's class order (None: already the same); other classes are refused."""
    if list(teacher) == list(data):
        return None
    if len(teacher) == len(data) and set(teacher) == set(data):
        return [list(teacher).index(c) for c in data]
    missing = [c for c in data if c not in set(teacher)]
    extra = [c for c in teacher if c not in set(data)]
    parts = [
        f"the data's {_few(missing)} not among its {len(teacher)}" if missing else "",
        f"its {_few(extra)} not in the data" if extra else "",
    ]
    raise UsageError(
        f"--teacher {source}: its classes are not the data's ({'; '.join(p for p in parts if p)}): a teacher must "
        "know exactly the data's classes (any order); train one on this data, or give another"
    )


def _few(names: list[str], n: int = 4) -> str:
    shown = ", ".join(f"'{c}'" for c in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def adapter(student: Preprocess, teacher: Preprocess) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The student's normalised batch as the teacher's input: None when the two preprocess alike (the same
    normalisation and input size); else un-normalised, resized to the teacher's size, normalised again."""
    same_norm = list(student.mean) == list(teacher.mean) and list(student.std) == list(teacher.std)
    if same_norm and student.img_size == teacher.img_size:
        return None
    s_mean, s_std, t_mean, t_std = (
        torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
        for v in (student.mean, student.std, teacher.mean, teacher.std)
    )
    size = teacher.img_size

    def adapt(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if not same_norm:
            x = x * s_std.to(x.device) + s_mean.to(x.device)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if not same_norm:
            x = (x - t_mean.to(x.device)) / t_std.to(x.device)
        return x

    return adapt
