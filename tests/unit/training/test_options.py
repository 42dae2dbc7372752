"""The options of the training tools in training/options.py: `lr` takes `auto` as well as a number, and every new
field has a type, a default, a range or choices, a --help line and a CLI flag made from it."""

from __future__ import annotations

import pytest
from conftest import usage_error

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.training.options import FIELDS, TrainConfig, check_config, make_config

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder

TOOLS = {  # field: (default, a value it takes, a value it refuses)
    "mixup": (0.0, 0.2, -0.1),
    "cutmix": (0.0, 1.0, -1.0),
    "mix_prob": (1.0, 0.5, 1.5),
    "mix_switch_prob": (0.5, 0.0, -0.5),
    "randaugment": ("none", "trivialaugment", "autoaugment"),
    "balance": ("none", "auto", "oversample"),
    "ema": (False, True, None),
    "ema_decay": (0.999, 0.9998, 1.0),
    "ema_warmup": (1000, 0, -1),
    "patience": (None, 3, 0),
    "monitor": ("val_acc", "val_macro_f1", "val_f1"),
    "freeze_epochs": (0, 2, -1),
    "backbone_lr_scale": (1.0, 0.1, 0.0),
    "accumulate": (1, 4, 0),
    "clip_grad": (None, 1.0, 0.0),
    "compile": (False, True, None),
    "log_histograms": (0, 100, -5),
}


@pytest.mark.parametrize("name", TOOLS)
def test_tool_fields_default_take_and_refuse(name):
    default, good, bad = TOOLS[name]
    assert FIELDS[name].default == default and getattr(TrainConfig(), name) == default
    assert getattr(make_config({name: good}), name) == good
    check_config(TrainConfig(**{name: good}))
    if bad is not None:
        with pytest.raises(UsageError, match=f"'{name}'"):
            make_config({name: bad})
        with pytest.raises(UsageError, match=f"'{name}'"):
            check_config(TrainConfig(**{name: bad}))


def test_every_tool_has_a_flag_in_train_help(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for name in TOOLS:
        assert "--" + name.replace("_", "-") in text
    assert "--no-ema" in text and "--no-compile" in text  # booleans: BooleanOptionalAction


@pytest.mark.parametrize("value", ["auto", "AUTO", " auto "])
def test_lr_auto_from_options_and_yaml(tmp_path, value):
    assert make_config({"lr": value}).lr == "auto"
    f = tmp_path / "run.yaml"
    f.write_text(f"lr: '{value}'\n")
    assert make_config(config_file=str(f)).lr == "auto"
    check_config(TrainConfig(lr="auto"))


def test_lr_still_takes_numbers():
    assert make_config({"lr": "0.05"}).lr == 0.05
    assert make_config({"lr": 1}).lr == 1.0 and isinstance(make_config({"lr": 1}).lr, float)
    assert make_config({}).lr is None


@pytest.mark.parametrize(
    "value, expect", [("fast", "must be float (or auto)"), (-1, "above 0 (or auto), not -1"), (0, "above 0 (or auto)")]
)
def test_lr_refuses_other_words_and_numbers(value, expect):
    with pytest.raises(UsageError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        make_config({"lr": value})


@pytest.mark.parametrize("value", ["Auto", "0.1", True])
def test_lr_from_python_is_a_number_or_auto(value):
    # a TrainConfig built in Python never went through `coerce`: the check says what is wrong, not a TypeError
    with pytest.raises(UsageError, match=r"'lr' must be a number above 0 \(or auto\)"):
        check_config(TrainConfig(lr=value))


def test_lr_auto_on_the_command_line(capsys):
    # parsed, then refused for the missing data: proof that `--lr auto` itself passed the parser
    line = usage_error(capsys, ["train", "--data", "/nonexistent", "--lr", "auto"])
    assert "/nonexistent" in line
    line = usage_error(capsys, ["train", "--data", "/nonexistent", "--lr", "automatic"])
    assert "--lr" in line and "(or auto)" in line
