"""`imgclf tune` (studies/tune.py) on the tiny data: trials that really differ, each a run folder; a failing trial
recorded with its reason while the study goes on; best.yaml that `imgclf train --config` runs as it is; an
interrupted trial continued, not repeated, when the study resumes; and its options checked before any work."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import tiny_argv, usage_error

optuna = pytest.importorskip("optuna", reason="Optuna is the optional [tune] extra")

pytestmark = pytest.mark.usefixtures("in_tmp")


def tune(argv) -> int:
    from imgclf.cli.main import main

    return main(["tune", *argv, "-q"])


def space_file(tmp_path, **entries) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(entries))
    return str(path)


def test_trials_differ_each_is_a_run_and_best_yaml_trains_as_it_is(tmp_path, tiny_data):
    space = space_file(tmp_path, lr={"type": "float", "low": 0.01, "high": 0.2, "log": True})
    assert tune([*tiny_argv(data=tiny_data, epochs=2, name="st"), "--trials", "3", "--space", space]) == 0
    folder = tmp_path / "runs" / "st"
    result = json.loads((folder / "tune.json").read_text())
    lrs = [t["params"]["lr"] for t in result["trials"]]
    assert len(result["trials"]) == 3 and len(set(lrs)) == 3
    for t in result["trials"]:  # each trial trained with its own lr (Ultralytics #23814: every trial the same)
        config = yaml.safe_load((folder / "trials" / f"{t['number']:03d}" / "config.yaml").read_text())
        assert config["lr"] == pytest.approx(t["params"]["lr"])
    best = result["best"]
    assert best["value"] == max(t["value"] for t in result["trials"] if t["state"] == "complete")
    config = yaml.safe_load((folder / "best.yaml").read_text())
    assert config["lr"] == best["params"]["lr"] and config["model"] == "test_tiny" and "name" not in config
    page = (folder / "tune.html").read_text()
    assert len(re.findall(r"<tr><td>\d+</td><td>(complete|pruned|fail)</td>", page)) == 3
    assert (folder / "tune_history.png").exists() and (folder / "tune_curves.png").exists()
    from imgclf.cli.main import main

    assert main(["train", "--config", str(folder / "best.yaml"), "--name", "again", "-q"]) == 0
    again = yaml.safe_load((tmp_path / "runs" / "again" / "config.yaml").read_text())
    assert again["lr"] == pytest.approx(best["params"]["lr"])


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, tiny_data):
    """An lr that makes the loss non-finite fails its trial, which says so; the others complete."""
    space = space_file(tmp_path, lr={"type": "categorical", "choices": [1.0e12, 0.05]})
    assert tune([*tiny_argv(data=tiny_data, epochs=1, name="f"), "--trials", "4", "--space", space]) == 0
    trials = json.loads((tmp_path / "runs" / "f" / "tune.json").read_text())["trials"]
    failed = [t for t in trials if t["state"] == "fail"]
    assert failed and all(t["params"]["lr"] == 1.0e12 for t in failed)
    assert all(t["why"].startswith("TrainingDiverged: step ") and "lower --lr" in t["why"] for t in failed)
    assert any(t["state"] == "complete" for t in trials)


def test_an_interrupted_trial_is_continued_from_its_checkpoint_not_repeated(tmp_path, tiny_data):
    """A study whose trial 1 was running when `tune` was killed: --resume auto marks it failed, continues its run
    folder from last.pt as a new trial with the same options, and keeps trial 0 as it was."""
    space = space_file(tmp_path, lr={"type": "float", "low": 0.01, "high": 0.2, "log": True})
    argv = [*tiny_argv(data=tiny_data, epochs=2, name="k"), "--space", space]
    assert tune([*argv, "--trials", "1"]) == 0
    folder = tmp_path / "runs" / "k"
    study = optuna.load_study(study_name="imgclf", storage=f"sqlite:///{folder}/study.db")
    killed = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True)})
    run = folder / "trials" / "001"
    killed.set_user_attr("run_dir", str(run))
    from imgclf.cli.main import main

    # the killed trial's run: one epoch of two done, its last.pt there
    assert (
        main(
            ["train", *tiny_argv(data=tiny_data, epochs=1, lr=killed.params["lr"]), "--out", str(run.parent)]
            + ["--name", "001", "-q"]
        )
        == 0
    )
    assert tune([*argv, "--trials", "2", "--resume", "auto"]) == 0
    trials = json.loads((folder / "tune.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete", "fail", "complete"]
    assert trials[1]["why"] == "interrupted, continued as trial 2"
    assert trials[2]["params"] == trials[1]["params"] and trials[2]["run_dir"] == str(run)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # the header, the epoch done before the kill and the one after: nothing trained twice
    # the resumed session's sampler does not start over: no trial of the first session is proposed again
    assert tune([*argv, "--trials", "3", "--resume", "auto"]) == 0
    trials = json.loads((folder / "tune.json").read_text())["trials"]
    assert trials[3]["params"] != trials[0]["params"]


def test_tune_options_are_checked_before_any_work(capsys, tmp_path, tiny_data):
    bad = space_file(tmp_path, out={"type": "categorical", "choices": ["x"]})
    assert "not an option a trial can search" in usage_error(
        capsys, ["tune", *tiny_argv(data=tiny_data), "--space", bad]
    )
    assert "give a time such as 30m" in usage_error(capsys, ["tune", *tiny_argv(data=tiny_data), "--budget", "soon"])
    low = space_file(tmp_path, lr={"type": "float", "low": 0, "high": 1, "log": True})
    assert "a log range needs low > 0" in usage_error(capsys, ["tune", *tiny_argv(data=tiny_data), "--space", low])
    assert not (tmp_path / "runs").exists()


def test_the_fast_recipes_lr_is_searched_around_the_recipes_own():
    """The fast recipe trains at batch 1,024 with lr LR_PER_IMAGE x 1,024 (1.5): its lr range is a quarter to four
    times that, not the range of the generic default batch (128) the base holds before the recipe is applied."""
    from imgclf.studies.tune import default_space
    from imgclf.training.options import TrainConfig
    from imgclf.training.recipes import LR_PER_IMAGE, apply_recipe

    base = TrainConfig(data="d", recipe="fast")
    recipe_lr = apply_recipe(base, set(base.explicit)).lr
    lr = default_space(base)["lr"]
    assert lr["low"] == pytest.approx(recipe_lr / 4) and lr["high"] == pytest.approx(recipe_lr * 4)
    assert recipe_lr == pytest.approx(LR_PER_IMAGE * 1024)
    given = default_space(TrainConfig(data="d", recipe="fast", batch_size=256))["lr"]
    assert given["high"] == pytest.approx(LR_PER_IMAGE * 256 * 4)


def test_epochs_are_reported_at_the_trials_progress_through_its_own_schedule():
    """In a study of up to 6 epochs, a 2-epoch trial's epochs are steps 3 and 6 (the pruner compares trials at the
    same point of their schedules); a 6-epoch trial's are 1, 2, ...; steps never repeat when scaled down."""
    from types import SimpleNamespace

    from imgclf.studies.tune import ReportEpochs

    class Trial:
        def __init__(self):
            self.steps = []

        def report(self, value, step):
            self.steps.append(step)

        def should_prune(self):
            return False

    for scale, expected in ((6 / 2, [3, 6]), (1.0, [1, 2]), (0.5, [1, 2])):
        trial = Trial()
        reporter = ReportEpochs(trial, "val_acc", scale=scale)
        for epoch in (1, 2):
            reporter.on_validation_end(SimpleNamespace(state=SimpleNamespace(epoch=epoch)), {"val_acc": 0.5})
        assert trial.steps == expected
