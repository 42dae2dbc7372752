"""Adversarial training (--adv-train): the attacks bounds, the training hook, the robust validation column,
exact resume, and airnet whitening bounded by the attack."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from conftest import metrics_rows as _rows
from conftest import train_tiny as _train
from torch import nn

import imgclf
from imgclf.evaluation.robustness import PixelModel, fgsm_rs, n_fgsm
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.adversarial import Perturb, robust_subset, to_pixels
from imgclf.training.callbacks.adversarial import OverfitWarning
from imgclf.training.trainer import train_steps

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture
def data(tmp_path, make_folder):
    return str(make_folder(tmp_path / "d", classes=("a", "b", "c"), n=12, n_val=4, size=16))


def _same_weights(a: str, b: str) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_fgsm_with_a_random_start_stays_in_the_eps_ball_and_the_image():
    x = torch.rand(4, 3, 8, 8)
    x[0] = 0.0  # at the edge of [0, 1]: the projection keeps it inside
    y = torch.tensor([0, 1, 2, 0])
    model = PixelModel(_Tiny(), MEAN, STD, channels_last=False)
    eps = 8 / 255
    adv = fgsm_rs(model, x, y, eps, generator=torch.Generator().manual_seed(1))
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2  # it moved
    again = fgsm_rs(model, x, y, eps, generator=torch.Generator().manual_seed(1))
    assert torch.equal(adv, again)  # the random start comes from the generator


def test_n_fgsm_steps_eps_from_noise_of_twice_eps_without_projecting_back():
    x = torch.full((4, 3, 8, 8), 0.5)
    y = torch.tensor([0, 1, 2, 0])
    model = PixelModel(_Tiny(), MEAN, STD, channels_last=False)
    eps = 8 / 255
    adv = n_fgsm(model, x, y, eps, generator=torch.Generator().manual_seed(1))
    d = (adv - x).abs()
    assert d.max() <= 3 * eps + 1e-6  # noise up to 2 eps plus one step of eps
    assert d.max() > 1.5 * eps  # not projected onto the eps-ball: FGSM-RS could never leave it
    assert torch.equal(adv, n_fgsm(model, x, y, eps, generator=torch.Generator().manual_seed(1)))
    small = n_fgsm(model, x, y, eps, step_size=1 / 255, generator=torch.Generator().manual_seed(1))
    assert (small - x).abs().max() <= 2 * eps + 1 / 255 + 1e-6  # --adv-step sets the step
    edge = n_fgsm(model, torch.zeros_like(x), y, eps, generator=torch.Generator().manual_seed(1))
    assert edge.min() >= 0 and edge.max() <= 1


def test_overfit_warning_fires_once_on_catastrophic_overfitting_only():
    said = []

    class Run:
        def say(self, level, msg, *args):
            said.append((level, msg % args))

    trainer = type("T", (), {"run_dir": Run()})()
    warn = OverfitWarning("fgsm")
    # logged epochs of PGD-3, N-FGSM and FGSM training of the fast recipe (docs/adversarial_training.md): no warning
    for train_acc, robust in ((0.12, 0.123), (0.47, 0.275), (0.43, 0.057), (0.30, 0.08), (0.185, 0.255), (0.37, 0.387)):
        warn.on_validation_end(trainer, {"epoch": 1, "train_acc": train_acc, "val_robust_acc": robust})
    warn.on_validation_end(trainer, {"epoch": 1, "train_acc": 0.9, "val_acc": 0.5})  # no robust validation
    assert said == []
    # FGSM training with airbench's whitening: the signature from its first epoch
    for epoch, train_acc, robust in ((1, 0.329, 0.004), (2, 0.514, 0.0), (3, 0.822, 0.0)):
        warn.on_validation_end(trainer, {"epoch": epoch, "train_acc": train_acc, "val_robust_acc": robust})
    assert len(said) == 1 and said[0][0] == logging.WARNING
    assert "epoch 1: catastrophic overfitting" in said[0][1] and "--adv-train pgd or nfgsm" in said[0][1]
    # with a tenth of the bounded whitening regulariser: robust after its first epoch, not after its second
    warn, said[:] = OverfitWarning("fgsm"), []
    for epoch, train_acc, robust in ((1, 0.194, 0.22), (2, 0.415, 0.014), (3, 0.6, 0.0)):
        warn.on_validation_end(trainer, {"epoch": epoch, "train_acc": train_acc, "val_robust_acc": robust})
    assert len(said) == 1 and "epoch 2: catastrophic overfitting" in said[0][1]


def test_perturb_returns_a_normalised_batch_within_eps_in_pixel_units():
    model = _Tiny()
    pixels = torch.rand(4, 3, 8, 8)
    pm = PixelModel(model, MEAN, STD, channels_last=False)
    x = torch.addcmul(pm.b, pixels * 255.0, pm.a)  # as the batches normalise
    assert torch.allclose(to_pixels(pm, x), pixels, atol=1e-5)
    p = Perturb(model, "pgd", 4 / 255, 3, mean=MEAN, std=STD, channels_last=False, device=torch.device("cpu"), amp=None)
    p.generator = torch.Generator().manual_seed(0)
    out = p(x, torch.tensor([0, 1, 2, 0]))
    moved = to_pixels(pm, out) - pixels
    assert moved.abs().max() <= 4 / 255 + 1e-5 and moved.abs().max() > 1 / 255
    n = Perturb(
        model, "nfgsm", 4 / 255, 1, mean=MEAN, std=STD, channels_last=False, device=torch.device("cpu"), amp=None
    )
    n.generator = torch.Generator().manual_seed(0)
    moved = to_pixels(pm, n(x, torch.tensor([0, 1, 2, 0]))) - pixels
    assert moved.abs().max() <= 12 / 255 + 1e-5 and moved.abs().max() > 4 / 255


def test_train_steps_trains_on_the_perturbed_batch():
    """The hook sits before the forward pass that trains: training through a perturb that swaps the batch for a
    constant one gives the weights of training on the constant batch."""
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    const = torch.full_like(x, 0.5)
    runs = []
    for batch, perturb in ((x, lambda a, b: const), (const, None)):
        model = _Tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_steps(
            model, [(batch, y)], nn.CrossEntropyLoss(), opt, scaler, torch.device("cpu"), None,
            channels_last=False, perturb=perturb,
        )  # fmt: skip
        runs.append(model.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_robust_subset_is_seeded_and_within_the_split():
    a, b = robust_subset(50, 10), robust_subset(50, 10)
    assert torch.equal(a, b) and len(a) == 10 and a.max() < 50
    assert len(robust_subset(5, 10)) == 5


def test_adv_train_logs_the_robust_validation_and_resumes_exactly(tmp_path, data):
    whole = _train(tmp_path, data, "whole", epochs=3, adv_train="fgsm", adv_val_images=6)
    rows = _rows(whole["run_dir"])
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(0.0 <= float(r["val_robust_acc"]) <= 1.0 for r in rows)
    assert whole["robust"]["images"] == 6 and whole["robust"]["eps"] == "8/255"
    assert "robust_accuracy" in load_checkpoint(os.path.join(whole["run_dir"], "last.pt"))["metrics"]

    part = _train(tmp_path, data, "part", epochs=2, adv_train="fgsm", adv_val_images=6)
    imgclf.train(resume=os.path.join(part["run_dir"], "epoch_2.pt" if False else "last.pt"), epochs=3, workers=0)
    _same_weights(os.path.join(whole["run_dir"], "last.pt"), os.path.join(part["run_dir"], "last.pt"))
    assert _rows(part["run_dir"])[2]["val_robust_acc"] == rows[2]["val_robust_acc"]


def test_pgd_adv_train_changes_the_training_and_can_be_monitored(tmp_path, data):
    plain = _train(tmp_path, data, "plain", epochs=1)
    adv = _train(tmp_path, data, "pgd", epochs=1, adv_train="pgd", adv_steps=2, monitor="val_robust_acc")
    assert adv["monitor"] == "val_robust_acc"
    a = load_checkpoint(os.path.join(plain["run_dir"], "last.pt"))["state_dict"]
    b = load_checkpoint(os.path.join(adv["run_dir"], "last.pt"))["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_airnet_whitening_is_bounded_by_the_attack_under_adv_train(tmp_path, make_folder):
    """With --adv-train, airnet's whitening layer moves by at most 1 along any of its channels for a perturbation
    inside the eps-ball (adversarial_whitening_eps); without, airbench's regulariser amplifies far more."""
    from imgclf.models.airnet import adversarial_whitening_eps

    assert adversarial_whitening_eps(8 / 255, [0.247, 0.2435, 0.2616]) == pytest.approx(0.1992, abs=1e-4)
    assert adversarial_whitening_eps(1e-4, [0.25] * 3) == 5e-4  # never below airbench's
    d = str(make_folder(tmp_path / "d32", classes=("a", "b"), n=8, n_val=2, size=32))

    def reach(run, eps=8 / 255) -> float:  # the most a perturbation of L-infinity eps moves a whitened channel
        ck = load_checkpoint(os.path.join(run["run_dir"], "last.pt"))
        std = torch.tensor(ck["preprocess"]["std"]).view(1, 3, 1, 1)
        return float((ck["state_dict"]["whiten.weight"].abs() * eps / std).sum((1, 2, 3)).max())

    opts = dict(model="airnet_small", img_size=32, epochs=1, max_steps=1)
    plain = _train(tmp_path, d, "plain", **opts)
    adv = _train(tmp_path, d, "adv", adv_train="fgsm", adv_val_images=2, **opts)
    assert reach(adv) <= 1.0 + 1e-5 < reach(plain)
    assert "whitening regulariser 0.1" in open(os.path.join(adv["run_dir"], "train.log"), encoding="utf-8").read()
