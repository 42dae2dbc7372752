"""--teacher (knowledge distillation): the loss is Hinton's formula; a teacher in another class order is mapped by
name; a teacher with other classes is refused in one line before any work; a run stopped inside an epoch and
resumed ends as the unbroken one; results.json records the teacher; the frozen-feature cache's teacher logits are
the ones the teacher gives its images."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import train_tiny, usage_error
from test_preempt import SigtermAt, rows, train_with

from imgclf.cli.main import main
from imgclf.core.artifact import Preprocess
from imgclf.core.callback import Callback
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.distill import DistillLoss, adapter, class_order, open_teacher
from imgclf.training.features import train_views

pytestmark = pytest.mark.kernels


def test_the_loss_is_the_reference_formula():
    gen = torch.Generator().manual_seed(0)
    out, teacher = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen) * 3
    y = torch.randint(0, 4, (6,), generator=gen)
    a, t = 0.3, 2.5
    loss = DistillLoss(torch.nn.CrossEntropyLoss(), a, t)
    loss.teacher_logits = teacher
    p_t = torch.softmax(teacher / t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(out / t, 1))).sum(1).mean()
    want = (1 - a) * torch.nn.functional.cross_entropy(out, y) + a * t * t * kl
    assert torch.allclose(loss(out, y), want, atol=1e-6)
    loss.teacher_logits = teacher[:5]  # another batch's: refused, never silently misaligned
    with pytest.raises(RuntimeError):
        loss(out, y)


def test_class_order_maps_by_name_and_refuses_other_classes():
    assert class_order(["a", "b"], ["a", "b"], "T") is None
    assert class_order(["b", "c", "a"], ["a", "b", "c"], "T") == [2, 0, 1]
    with pytest.raises(Exception, match="'c' not among its 2.*its 'z' not in the data"):
        class_order(["a", "z"], ["a", "c"], "T")


def test_the_adapter_brings_the_student_batch_to_the_teacher_s_preprocessing():
    student = Preprocess(8, 8, [0.5] * 3, [0.25] * 3)
    assert adapter(student, Preprocess(8, 8, [0.5] * 3, [0.25] * 3)) is None
    teacher = Preprocess(16, 16, [0.0] * 3, [1.0] * 3)
    pixels = torch.rand(2, 3, 8, 8)
    got = adapter(student, teacher)((pixels - 0.5) / 0.25)
    assert got.shape == (2, 3, 16, 16)
    want = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(got, want, atol=1e-5)


def _permuted(ckpt_path: str, out: str, perm: list[int], names=None) -> str:
    """The checkpoint with its classes (and head rows) in the order `perm`, renamed to `names` if given."""
    ckpt = load_checkpoint(ckpt_path)
    ckpt["classes"] = names or [ckpt["classes"][i] for i in perm]
    sd = ckpt["state_dict"]
    for k in [k for k, v in sd.items() if v.dim() >= 1 and v.shape[0] == len(perm) and k.startswith("fc")]:
        sd[k] = sd[k][perm]
    torch.save(ckpt, out)
    return out


def test_a_teacher_in_another_class_order_gives_the_same_logits(tiny_best, tmp_path):
    ckpt = load_checkpoint(tiny_best)
    assert any(k.startswith("fc") for k in ckpt["state_dict"]), list(ckpt["state_dict"])
    other = _permuted(tiny_best, str(tmp_path / "perm.pt"), [2, 0, 1])
    cfg = SimpleNamespace(task="single", teacher=tiny_best)
    prep = Preprocess.from_dict(ckpt["preprocess"])
    same = open_teacher(cfg, list(ckpt["classes"]), prep, torch.device("cpu"))
    mapped = open_teacher(SimpleNamespace(task="single", teacher=other), list(ckpt["classes"]), prep, "cpu")
    assert same.order is None and mapped.order == [1, 2, 0]
    x = torch.randn(5, 3, 16, 16)
    assert torch.allclose(same.logits(x), mapped.logits(x), atol=1e-6)


def test_a_teacher_with_other_classes_is_refused_in_one_line(capsys, tiny_best, tiny_data, tmp_path):
    other = _permuted(tiny_best, str(tmp_path / "wolf.pt"), [0, 1, 2], names=["cat", "dog", "wolf"])
    argv = ["train", "--data", str(tiny_data), "--model", "test_tiny", "--teacher", other]
    line = usage_error(capsys, argv + ["--out", str(tmp_path / "runs")])
    assert "'fox' not among its 3" in line and "'wolf' not in the data" in line, line
    assert not os.path.exists(tmp_path / "runs")  # refused before any work: no run folder
    assert "does not exist" in usage_error(capsys, argv[:-1] + [str(tmp_path / "none.pt")])


def test_results_json_records_the_teacher_and_the_feature_cache_uses_its_logits(tiny_best, tiny_data, tmp_path):
    res = train_tiny(tmp_path, str(tiny_data), "student", epochs=1, teacher=tiny_best, distill_temperature=2)
    saved = json.load(open(os.path.join(res["run_dir"], "results.json")))["teacher"]
    assert saved["source"] == tiny_best and saved["model"] == "test_tiny" and saved["format"] == "checkpoint"
    assert saved["weight"] == 0.5 and saved["temperature"] == 2 and len(saved["sha256"]) == 64
    assert saved["val_images"] == 18 and 0 <= saved["val_acc"] <= 1
    with open(os.path.join(res["run_dir"], "report.html"), encoding="utf-8") as f:
        assert "Distillation: student and teacher" in f.read()

    seen = {}

    class Peek(Callback):  # what the cached feed holds: features, the teacher's logits beside them
        order = 300

        def on_fit_start(self, trainer):
            seen["feats"] = trainer.train_feed.feats
            seen["teacher"], seen["plain"] = trainer.data.teacher, trainer.data.train

    train_tiny(tmp_path, str(tiny_data), "cached", epochs=1, teacher=tiny_best, freeze="backbone", callbacks=[Peek()])
    feats = seen["feats"]  # views x N x (D + classes)
    plain = torch.cat([seen["teacher"].logits(x) for x, _ in seen["plain"].batches()])
    assert torch.allclose(feats[0, :, -3:], plain, atol=1e-6)
    # the augmented views are the same images each time they are drawn (features and teacher logits line up)
    once, again = (torch.cat([x for x, _ in train_views(seen["plain"], 2, 0)[2]]) for _ in range(2))
    assert torch.equal(once, again) and not torch.equal(once, torch.cat([x for x, _ in seen["plain"].batches()]))


# 48 training images in batches of 8: 6 steps an epoch (test_preempt's runs, with a teacher and augmentation)
TINY = ["--model", "test_tiny", "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--seed", "3"]
TINY += ["--lr", "0.05", "-q", "--epochs", "3", "--augment", "small", "--mixup", "0.2"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_a_run_stopped_inside_an_epoch_and_resumed_matches_the_unbroken_one(
    monkeypatch, capsys, tiny_best, tiny_data, tmp_path
):
    args = ["train", "--data", str(tiny_data), *TINY, "--teacher", tiny_best, "--out", str(tmp_path)]
    assert main(args + ["--name", "full"]) == 0
    train_with(monkeypatch, SigtermAt(9))  # step 3 of epoch 2
    assert main(args + ["--name", "stopped"]) == 143
    monkeypatch.undo()
    last = str(tmp_path / "stopped" / "last.pt")
    assert main(["train", "--resume", last, "-q"]) == 0
    assert rows(tmp_path / "stopped") == rows(tmp_path / "full")
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    ours = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.equal(ours[k], full[k]) for k in ours)
