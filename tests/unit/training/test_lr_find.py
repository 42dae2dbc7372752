"""The learning-rate range test (lr_find.py): an exponential sweep that stops on divergence, fastai's valley
suggestion, and the model and optimizer left exactly as they were."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from imgclf.evaluation.plots import plot_lr_find
from imgclf.training.lr_find import lr_range_test, suggest, valley

CPU = torch.device("cpu")


def _batches(k: int = 10, n: int = 64, d: int = 16) -> list:
    """Two Gaussian blobs 1.4 sd apart: learnable, not trivially."""
    out = []
    for seed in range(k):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        out.append((torch.randn(n, d, generator=g) + (y.float() * 2 - 1).view(-1, 1) * 0.7, y))
    return out


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def test_model_optimizer_mode_and_random_state_are_put_back():
    model = _model()
    opt = _sgd(model)
    for x, y in _batches(3):  # some optimizer state (momentum buffers) to keep
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm's running stats included
    momentum = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    rng = torch.get_rng_state()
    result = lr_range_test(model, _batches(), nn.CrossEntropyLoss(), opt, CPU, None)
    assert len(result["lrs"]) > 50  # it did train
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert not model.training
    assert opt.param_groups[0]["lr"] == 0.1
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], momentum[k])
    assert torch.equal(torch.get_rng_state(), rng)


def test_weights_are_put_back_when_the_sweep_fails():
    model, opt = _model(), None
    opt = _sgd(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def criterion(out, y):
        if criterion.calls == 5:
            raise RuntimeError("boom")
        criterion.calls += 1
        return nn.functional.cross_entropy(out, y)

    criterion.calls = 0
    with pytest.raises(RuntimeError, match="boom"):
        lr_range_test(model, _batches(), criterion, opt, CPU, None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_sweep_is_exponential_and_keeps_the_groups_ratios():
    model = _model()
    params = list(model.parameters())
    opt = torch.optim.SGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 0.01}], lr=0.1)
    seen = []

    def criterion(out, y):  # called once a step, after the step's lr is set
        seen.append([g["lr"] for g in opt.param_groups])
        return nn.functional.cross_entropy(out, y)

    result = lr_range_test(model, _batches(3), criterion, opt, CPU, None, start_lr=1e-6, end_lr=1e-3, steps=20)
    lrs = result["lrs"]
    assert len(lrs) == 20  # 3 batches, 20 steps: the batches are gone through again
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios)) and ratios[0] == pytest.approx(1000 ** (1 / 19))
    assert all(a == pytest.approx(lr) and b == pytest.approx(lr / 10) for (a, b), lr in zip(seen, lrs))
    assert "without diverging" in result["reason"]


def test_it_stops_when_the_loss_diverges_and_suggests_below_that():
    model = _model()
    result = lr_range_test(model, _batches(), nn.CrossEntropyLoss(), _sgd(model), CPU, None, end_lr=100.0)
    stopped = result["lrs"][-1]
    assert len(result["lrs"]) < 100 and "stopped at step" in result["reason"]
    assert result["losses"][-1] > 4 * min(result["losses"]) or not math.isfinite(result["raw_losses"][-1])
    assert 1e-5 < result["suggestion"] < stopped


def test_the_suggested_lr_trains_better_than_the_ends_of_the_sweep():
    model = _model()
    lr = lr_range_test(model, _batches(), nn.CrossEntropyLoss(), _sgd(model), CPU, None)["suggestion"]

    def final_loss(lr):
        m = _model()
        opt = _sgd(m, lr)
        for x, y in _batches() * 3:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        return float(loss.detach())

    assert final_loss(lr) < final_loss(1e-6) and final_loss(lr) < final_loss(10.0)


def test_valley_is_the_longest_fall():
    assert valley([5.0, 4.0, 3.0, 2.0, 1.0]) == (0, 4)
    assert valley([1.0, 3.0, 2.5, 2.0, 1.5, 1.0, 4.0])[1] == 5  # 3 > 2.5 > 2 > 1.5 > 1 ends at index 5
    assert valley([1.0, 1.0, 1.0]) == (0, 0)


def test_suggest_needs_a_fall():
    lrs = [10 ** (-7 + i / 10) for i in range(60)]
    assert suggest(lrs, [1.0] * 60, 60)[0] is None
    assert suggest(lrs[:6], [3.0, 2.0, 1.0, 0.5, 9.0, 20.0], 100)[0] is None  # stopped too soon to tell
    falling = [2.0] * 10 + [2.0 - i / 40 for i in range(40)] + [3.0] * 10
    lr, why = suggest(lrs, falling, 60)
    assert lrs[20] < lr < lrs[40] and "valley" in why


@pytest.mark.parametrize("with_suggestion", [True, False])
def test_plot(tmp_path, with_suggestion):
    import matplotlib

    backend = matplotlib.get_backend()
    lrs = [10 ** (-7 + i / 10) for i in range(60)]
    losses = [2.0] * 10 + [2.0 - i / 40 for i in range(40)] + [3.0] * 10
    result = {
        "lrs": lrs,
        "losses": losses,
        "raw_losses": losses,
        "suggestion": 1e-4 if with_suggestion else None,
        "reason": "",
    }
    path = tmp_path / "lr_find.png"
    plot_lr_find(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend


def test_bad_arguments():
    model = _model()
    for kw, match in (
        ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr < end_lr"),
        ({"steps": 1}, "at least 2"),
        ({"smooth": 0.0}, "smooth"),
        ({"diverge": 1.0}, "diverge"),
    ):
        with pytest.raises(ValueError, match=match):
            lr_range_test(model, _batches(1), nn.CrossEntropyLoss(), _sgd(model), CPU, None, **kw)
    with pytest.raises(ValueError, match="no batches"):
        lr_range_test(model, [], nn.CrossEntropyLoss(), _sgd(model), CPU, None)


def test_a_range_test_on_fewer_images_than_a_batch_warns(capsys, tmp_path, make_folder, monkeypatch):
    """Issue 22 (14): `lr-find` on 2 training images suggested an lr with no warning. Below one batch every step
    of the sweep trains on the same images: one warning line says the suggestion is unreliable."""
    from imgclf.cli.main import main
    from imgclf.training.lr_find import few_images

    assert few_images(128, 128) is None and few_images(2, 128).startswith("the learning-rate range test sees only 2")
    monkeypatch.chdir(tmp_path)
    data = make_folder(tmp_path / "two", classes=("a", "b"), n=1, n_val=1)
    assert main(["lr-find", "--data", str(data), "--model", "test_tiny", "--workers", "0", "--steps", "20"]) in (0, 1)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {few_images(2, 128)}"]


def test_lr_auto_on_four_images_is_refused_in_imgclfs_own_words(capsys, tmp_path, make_folder):
    """`train --lr auto` on 4 images (2 classes, no val folder) was refused in scikit-learn's words ("The
    test_size = 1 should be greater or equal to the number of classes = 2"); now in imgclf's, with a fix."""
    from conftest import usage_error

    data = make_folder(tmp_path / "four", layout="flat", classes=("a", "b"), n=2)
    line = usage_error(
        capsys, ["train", "--data", str(data), "--model", "test_tiny", "--lr", "auto", "--out", str(tmp_path)]
    )
    assert "test_size" not in line and "--val-fraction 0.2 of 4 images keeps 1 for validation" in line
    assert "pass --val-fraction 0.5, add images, or give a val/ folder" in line
