"""A run that will not fit in memory is refused before it starts (training/fits.py), also before torchrun starts
its ranks (--nproc), and `bench` refuses batch sizes that will not fit (issue 22, defects 5 and 15)."""

from __future__ import annotations

import logging
import os

import pytest
from conftest import TINY_RUN, tiny_argv, usage_error

import imgclf.cli.run_train as run_train
import imgclf.exporting.bench as bench
from imgclf.cli.main import main
from imgclf.compute import memory
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import UsageError
from imgclf.training import fits
from imgclf.training.plan import resolve

MB = 1_000_000


@pytest.fixture
def machine(monkeypatch):
    """A machine with `room` bytes available, and a fresh imgclf process of 300 MB."""

    def set_room(room: int):
        monkeypatch.setattr(memory, "available", lambda device=None: (room, "available"))

    monkeypatch.setattr(memory, "resident", lambda: 300 * MB)
    return set_room


def _estimate(tiny_data, **options):
    plan = resolve(None, {**TINY_RUN, "data": str(tiny_data), **options})
    prep = Preprocess(img_size=16, resize=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    return plan, prep


def test_a_run_that_does_not_fit_is_refused_before_any_work(machine, tiny_data, tmp_path, capsys):
    machine(1 * MB)  # 1 MB free: a tiny run's weights and activations are more
    line = usage_error(capsys, ["train", "--data", str(tiny_data), *tiny_argv(), "--out", str(tmp_path / "runs")])
    assert line.startswith("imgclf: error: this run needs about ") and "1 MB is available" in line
    assert "activations of 8 images at 16 px" in line and "lower --batch-size" in line and "--no-memory-check" in line
    assert not (tmp_path / "runs").exists()  # nothing written, nothing decoded


def test_no_memory_check_starts_anyway_with_a_warning(machine, tiny_data, tmp_path, capsys):
    machine(1 * MB)
    argv = ["train", "--data", str(tiny_data), *tiny_argv(epochs=1), "--out", str(tmp_path), "--no-memory-check"]
    assert main(argv) == 0
    assert "starting anyway (--no-memory-check)" in capsys.readouterr().err


def test_the_fast_recipe_is_checked_with_the_batch_its_images_get(machine, tiny_data, tmp_path):
    """--recipe fast on 64 px images takes 256 a step (recipes.sized_for_images), and is estimated so."""
    plan = resolve(None, {"data": str(tiny_data), "recipe": "fast", "out": str(tmp_path)})
    prep = Preprocess(img_size=64, resize=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    machine(1 * MB)
    with pytest.raises(UsageError, match="activations of 256 images at 64 px"):
        fits.check_run_memory(plan, prep, (48, 18), 3)


def test_a_run_close_to_the_limit_is_warned(machine, tiny_data, tmp_path, caplog):
    plan, prep = _estimate(tiny_data, out=str(tmp_path))
    need = fits.estimate(plan.cfg, prep, (48, 18), 3, ranks=1, starting=0, device=plan.device).total
    machine(int(need / 0.9))
    with caplog.at_level(logging.WARNING, "imgclf"):
        said = fits.check_run_memory(plan, prep, (48, 18), 3)
    assert said and "close to the limit" in caplog.text


def test_the_estimate_grows_with_batch_image_size_ranks_and_the_memory_cache(tiny_data, tmp_path):
    plan, prep = _estimate(tiny_data, out=str(tmp_path))

    def total(cfg=None, prep=prep, ranks=1, starting=0):
        return fits.estimate(cfg or plan.cfg, prep, (48, 18), 3, ranks=ranks, starting=starting, device=plan.device)

    base = total()
    act = base.parts["activations of 8 images at 16 px"]
    assert act > 0
    bigger = total(plan.cfg.resolved(batch_size=512))  # above the evaluation batch of 256: training counts
    assert bigger.parts["activations of 512 images at 16 px"] > act
    big = prep.__class__(img_size=64, resize=64, mean=prep.mean, std=prep.std)
    assert total(prep=big).parts["activations of 8 images at 64 px"] > 10 * act
    four = total(ranks=4, starting=4)
    assert four.per_rank == base.per_rank + 300 * MB or four.parts["the process itself"] > 0
    assert four.total == 4 * four.per_rank
    cached = total(plan.cfg.resolved(cache="memory"))
    assert cached.parts["decoded images"] == (48 + 18) * 3 * 16 * 16


def test_lite0_fine_tuning_at_224_px_is_estimated_as_measured(tiny_data, tmp_path):
    """EfficientNet-Lite0 fully fine-tuned at 224 px, batch 128, fp32: the estimate against the resident memory
    measured on this project's CPU machine (docs/benchmarks.md, "Memory": 10.8 GB before LeanReLU6)."""
    plan, _ = _estimate(tiny_data, out=str(tmp_path), model="efficientnet_lite0", batch_size=128)
    prep = Preprocess(img_size=224, resize=256, mean=(0.5,) * 3, std=(0.5,) * 3)
    est = fits.estimate(plan.cfg, prep, (318, 80), 2, ranks=1, starting=0, device=plan.device)
    assert 8e9 < est.total < 14e9


def test_nproc_checks_the_memory_of_every_rank_before_torchrun_starts(
    machine, tiny_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(run_train, "launch_torchrun", lambda *a: pytest.fail("torchrun started"))
    plan, prep = _estimate(tiny_data, out=str(tmp_path))
    one = fits.estimate(plan.cfg, prep, (48, 18), 3, ranks=1, starting=1, device=plan.device).total
    machine(int(one * 1.5))  # one rank fits, two do not
    argv = ["train", "--data", str(tiny_data), *tiny_argv(epochs=1), "--out", str(tmp_path), "--nproc", "2"]
    line = usage_error(capsys, argv)
    assert "2 ranks x " in line and "the process itself 300 MB" in line and "or --nproc" in line
    assert not os.listdir(tmp_path)


def test_bench_refuses_batch_sizes_that_do_not_fit(tiny_best, machine, capsys, monkeypatch):
    """`imgclf bench W --batch-sizes 100000` (defect 15): refused before the images are made."""
    monkeypatch.setattr(bench, "_images", lambda *a: pytest.fail("images made"))
    machine(256 * MB)  # 100,000 images of 16x16 px, and their copy, are 614 MB
    line = usage_error(capsys, ["bench", tiny_best, "--batch-sizes", "100000"])
    assert line.startswith("imgclf: error: bench needs about ") and "256 MB is available" in line
    assert "lower --batch-sizes (about " in line and "--no-memory-check" in line
    with pytest.raises(pytest.fail.Exception, match="images made"):
        main(["bench", tiny_best, "--batch-sizes", "100000", "--no-memory-check"])
    assert "starting anyway" in capsys.readouterr().err


def test_a_hundred_ranks_on_this_machine_are_refused_for_memory(machine, tiny_data, tmp_path):
    """`--nproc 100` (defect 5's memory part): 100 fresh processes of 300 MB each do not fit in 24 GB."""
    machine(24 * 2**30)
    plan, prep = _estimate(tiny_data, out=str(tmp_path))
    with pytest.raises(UsageError) as e:
        fits.check_run_memory(plan, prep, (48, 18), 3, ranks=100, starting=100)
    assert "100 ranks x " in str(e.value) and "or --nproc" in str(e.value)
    assert fits.check_run_memory(plan, prep, (48, 18), 3, ranks=8, starting=8) is None  # 8 tiny ranks fit
