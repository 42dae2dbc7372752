"""`--recipe fast`: its presets, the per-step schedule, lookahead, the shift augmentation and --time-budget."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from imgclf.data.batches import BatchTransform, random_crop
from imgclf.models.airnet import AirNet, WhiteningBiasWarmup
from imgclf.training.build import StepSchedule
from imgclf.training.callbacks import Lookahead, TimeBudget
from imgclf.training.options import make_config
from imgclf.training.recipes import LR_PER_IMAGE, RECIPES, apply_recipe, sized_for_images


def test_recipe_fills_only_the_options_not_given_and_scales_lr_with_the_batch():
    cfg = apply_recipe(make_config({"recipe": "fast", "data": "x"}), {"recipe", "data"})
    assert cfg.model == "airnet_small" and cfg.nesterov and cfg.lookahead and cfg.scheduler == "warmup-linear"
    assert cfg.lr == pytest.approx(LR_PER_IMAGE * 1024)  # airbench: 11.5 per 1024 images of summed loss
    mine = apply_recipe(
        make_config({"recipe": "fast", "batch_size": 256, "model": "airnet", "epochs": 3}),
        {"recipe", "batch_size", "model", "epochs"},
    )
    assert (mine.batch_size, mine.model, mine.epochs) == (256, "airnet", 3)
    assert mine.lr == pytest.approx(LR_PER_IMAGE * 256)
    assert mine.label_smoothing == RECIPES["fast"]["label_smoothing"]
    given = apply_recipe(make_config({"recipe": "fast", "lr": 0.5}), {"recipe", "lr"})
    assert given.lr == 0.5
    assert apply_recipe(make_config({}), set()) == make_config({})  # recipe none: nothing changes


@pytest.mark.parametrize("side, batch", [(32, 1024), (28, 1024), (64, 256), (96, 128), (128, 64), (224, 32)])
def test_fast_recipe_batch_holds_the_pixels_of_1024_images_of_32_px(side, batch):
    cfg = apply_recipe(make_config({"recipe": "fast", "data": "x"}), {"recipe", "data"})
    sized = sized_for_images(cfg, side, 1)
    assert sized.batch_size == batch and sized.lr == pytest.approx(LR_PER_IMAGE * batch)
    if side > 32:  # a batch made smaller: its lr for the ranks' global batch, as apply_recipe's
        assert sized_for_images(cfg, side, 2).lr == pytest.approx(LR_PER_IMAGE * batch * 2)


def test_fast_recipe_batch_keeps_what_the_user_set():
    given = {"recipe": "fast", "batch_size": 1024, "data": "x"}
    cfg = apply_recipe(make_config(given), set(given))
    assert sized_for_images(cfg, 64, 1) is cfg  # --batch-size 1024 given: kept
    lr = apply_recipe(make_config({"recipe": "fast", "lr": 0.5}), {"recipe", "lr"})
    assert (sized_for_images(lr, 64, 1).batch_size, sized_for_images(lr, 64, 1).lr) == (256, 0.5)
    plain = make_config({"batch_size": 1024})
    assert sized_for_images(plain, 64, 1) is plain  # no recipe: nothing changes


def test_a_fast_run_on_64_px_images_trains_with_the_batch_of_its_pixels(tmp_path, make_folder, caplog):
    from imgclf import train

    data = make_folder(tmp_path / "d", classes=("a", "b"), n=8, n_val=4, size=64)
    with caplog.at_level("INFO", logger="imgclf"):
        train(data=str(data), recipe="fast", epochs=1, workers=0, precision="fp32", out=str(tmp_path), name="r")
    cfg = yaml.safe_load(open(tmp_path / "r/config.yaml"))
    assert (cfg["batch_size"], cfg["img_size"]) == (256, 64) and cfg["lr"] == pytest.approx(LR_PER_IMAGE * 256)
    assert "--recipe fast: batch 256 and lr 0.375 for 64 px images" in caplog.text


def test_unknown_recipe_is_a_usage_error_with_a_suggestion():
    from imgclf.core.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'fast'"):
        make_config({"recipe": "fats"})


def test_warmup_linear_schedule_shape():
    s = StepSchedule(100)
    assert s(0) == pytest.approx(0.2)
    assert s(23) == pytest.approx(1.0)
    assert s(100) == pytest.approx(0.07)
    values = [s(i) for i in range(101)]
    assert max(values) == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:23], values[1:24]))  # rising, then
    assert all(a >= b for a, b in zip(values[23:], values[24:]))  # falling


def test_lookahead_pulls_weights_to_the_running_average_and_ends_on_it():
    model = torch.nn.Linear(3, 2)
    look = Lookahead(model, every=5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    look.update(model, step=3, total=10)  # not a multiple of 5: nothing happens
    assert torch.equal(model.weight, start + 1.0)
    look.update(model, step=5, total=10)  # decay 0.95**5 * 0.5**3
    d = 0.95**5 * 0.125
    assert torch.allclose(model.weight, start + (1 - d))
    assert torch.allclose(look.avg["weight"], model.weight)
    with torch.no_grad():
        model.weight.add_(5.0)
    look.merge(model, 1.0)  # the end of training: the model becomes the average
    assert torch.allclose(model.weight, start + (1 - d))


def test_shift_augmentation_takes_windows_of_the_reflect_padded_image():
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 8, 2, g, mode="reflect")
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for i in range(len(x)):
        assert any(torch.equal(padded[i, :, t : t + 8, left : left + 8], out[i]) for t in range(5) for left in range(5))
    tf = BatchTransform(size=8, mean=[0.5] * 3, std=[0.25] * 3, kind="shift")
    y = tf(x, torch.Generator().manual_seed(0))
    assert y.shape == (32, 3, 8, 8) and y.dtype == torch.float32


def test_airnet_whitening_bias_trains_only_early():
    from types import SimpleNamespace

    m = AirNet(10)
    trainer = SimpleNamespace(state=SimpleNamespace(model=m, step=0), total_steps=100)
    WhiteningBiasWarmup().on_epoch_start(trainer)
    assert m.whiten.bias.requires_grad and not m.whiten.weight.requires_grad
    trainer.state.step = 50
    switch = WhiteningBiasWarmup()
    switch.on_epoch_start(trainer)
    assert not m.whiten.bias.requires_grad
    # --time-budget plans the run longer afterwards (50 steps of 1000): the bias stays frozen, also after a resume
    trainer.total_steps = 1000
    switch.on_epoch_start(trainer)
    assert not m.whiten.bias.requires_grad
    resumed = WhiteningBiasWarmup()
    resumed.load_state_dict(switch.state_dict())
    resumed.on_epoch_start(trainer)
    assert not m.whiten.bias.requires_grad


def test_budget_turns_minutes_into_steps(monkeypatch):
    import imgclf.training.callbacks.budget as cb

    b = TimeBudget(minutes=1.0, batch_size=100)
    b.t0 = b.t1 = 0.0
    monkeypatch.setattr(cb.time, "perf_counter", lambda: 7.0)  # 6 timed steps in 7 s after the first: 6/7 a second
    total = b.observe(1 + TimeBudget.PROBE, val_images=0, per_epoch=1000)
    # 60 s budget, 7 s gone: 53 s left at 6/7 steps/s = 45 more steps
    assert total == 7 + 45


def test_budget_charges_one_validation_per_epoch_it_keeps(monkeypatch):
    """60 steps' worth of time, 20 steps an epoch, each validation worth 10 steps (--adv-train's attacks): two
    epochs and their two validations fill it (40 steps), not three epochs' validations charged to 30 steps."""
    import imgclf.training.callbacks.budget as cb

    b = TimeBudget(minutes=1.0, batch_size=100, val_extra=1000)
    b.t0, b.t1 = 0.0, 1.0
    monkeypatch.setattr(cb.time, "perf_counter", lambda: 7.0)  # 6 timed steps in 6 s: 1 step a second, 53 s left
    total = b.observe(1 + TimeBudget.PROBE, val_images=0, per_epoch=20)
    assert total == 40


@pytest.mark.kernels
def test_fast_recipe_trains_resumes_exactly_and_keeps_to_a_time_budget(tmp_path, make_folder):
    from imgclf import train

    data = make_folder(tmp_path / "d", classes=("a", "b", "c"), n=24, n_val=6, size=32)
    common = dict(data=str(data), recipe="fast", batch_size=16, workers=0, out=str(tmp_path / "runs"))
    full = train(**common, epochs=3, name="full")
    assert full["steps"] == 3 * 5  # 72 images / 16 per batch: 5 steps an epoch (the last one of 8)
    cfg = yaml.safe_load(open(tmp_path / "runs/full/config.yaml"))
    assert cfg["model"] == "airnet_small" and cfg["lookahead"] and cfg["nesterov"]

    # resume from the checkpoint after epoch 2 (in a folder of its own): the same numbers as the whole run
    (tmp_path / "runs/resumed").mkdir()
    shutil.copy(tmp_path / "runs/full/epoch_2.pt", tmp_path / "runs/resumed/epoch_2.pt")
    train(resume=str(tmp_path / "runs/resumed/epoch_2.pt"), workers=0)
    a = (tmp_path / "runs/full/metrics.csv").read_text().splitlines()
    b = (tmp_path / "runs/resumed/metrics.csv").read_text().splitlines()
    drop_seconds = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731
    assert drop_seconds(a) == drop_seconds(b)
    wa = torch.load(tmp_path / "runs/full/last.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "runs/resumed/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # a budget too small for anything beyond the speed probe: the run stops there and records its length
    short = train(**common, epochs=3, name="budget", time_budget=0.0001)
    assert short["steps"] == 1 + TimeBudget.PROBE
    assert yaml.safe_load(open(tmp_path / "runs/budget/config.yaml"))["max_steps"] == 1 + TimeBudget.PROBE
