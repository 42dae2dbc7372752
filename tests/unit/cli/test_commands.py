"""The command table and the flags generated from each command's options object: shared options declared once,
one table, argument groups in --help, the export formats' own options, serve's two parsers from one declaration,
and `imgclf --help` / `imgclf check` without torch."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgclf.cli import commands
from imgclf.cli.export_options import ExportOptions
from imgclf.cli.main import COMMANDS, build_parser, main
from imgclf.core import shared_options as shared
from imgclf.core.formats import FORMATS, format_options
from imgclf.core.options import declared
from imgclf.serve import main as slim
from imgclf.serve.options import ServeCommandOptions, ServeOptions
from imgclf.training.options import TrainConfig

pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write into the test's own folder

SRC = Path(__file__).resolve().parents[3] / "src"


def _subparsers(parser=None) -> dict[str, argparse.ArgumentParser]:
    parser = parser or build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _option_classes() -> dict[str, type]:
    """Every options object a command's flags come from (train's TrainConfig too)."""
    return {c.name: c.options for c in commands.TABLE} | {"train (TrainConfig)": TrainConfig}


# ---------------------------------------------------------------------------------------------- declared once

SHARED = {
    "device": shared.DEVICE,
    "batch_size": shared.BATCH_SIZE,
    "data_root": shared.DATA_ROOT,
    "workers": shared.WORKERS,
    "split": shared.SPLIT,
    "tta": shared.TTA,
    "min_confidence": shared.MIN_CONFIDENCE,
    "json": shared.JSON,
    "max_pixels": shared.MAX_PIXELS,
    "verbose": shared.VERBOSE,
    "quiet": shared.QUIET,
    "ood_bank": shared.OOD_BANK,  # train and calibrate (issue 25)
    "ood_accept": shared.OOD_ACCEPT,
}
# options with a shared name but another meaning, declared on their own on purpose
OWN = {
    ("check", "workers"),  # decoding processes, at least 1, default all cores (not the data loader's workers)
}


def test_shared_options_come_from_one_declaration():
    seen = {name: 0 for name in SHARED}
    for command, cls in _option_classes().items():
        for name, spec, _ in declared(cls):
            if name in SHARED and (command, name) not in OWN:
                assert spec.origin is SHARED[name], f"{command} --{name} is declared again, not taken from core"
                seen[name] += 1
    # --device in 13 commands, --batch-size in 10, --data-root in 11, ...: each from its one declaration
    assert seen["device"] >= 10 and seen["batch_size"] >= 9 and seen["data_root"] >= 8, seen


# every command that decodes image files (issue 22, defect 18: explain had no pixel limit, serve had 40 MP)
DECODERS = {
    "train",
    "lr-find",
    "tune",
    "evaluate",
    "predict",
    "embed",
    "similar",
    "export",
    "bench",
    "select",
    "active-sim",
    "robustness",
    "score",
    "explain",
    "calibrate",
    "report",
    "check",
}


def test_every_command_that_decodes_images_takes_the_one_pixel_limit(tiny_best, tmp_path, capsys):
    """--max-pixels on every command that decodes files (serve's is the same declaration), 40 MP by default, the
    same as serve's; over it an image is left out with one line, from its header, and the others are kept."""
    parsers = _subparsers()
    have = {name for name, p in parsers.items() if any("--max-pixels" in a.option_strings for a in p._actions)}
    assert have == DECODERS | {"serve"}, have ^ (DECODERS | {"serve"})
    for name in DECODERS:
        (flag,) = [a for a in parsers[name]._actions if "--max-pixels" in a.option_strings]
        assert "[40000000]" in flag.help and shared.MAX_PIXELS.default == 40_000_000, name
    assert next(s for n, s, _ in declared(ServeOptions) if n == "max_pixels").origin is shared.MAX_PIXELS
    from PIL import Image

    from imgclf.data.images import max_pixels

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (16, 16), (10, 200, 10)).save(small)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(large)  # 1,600 pixels
    assert main(["predict", tiny_best, str(small), str(large), "--max-pixels", "1000"]) == 0
    out = capsys.readouterr()
    rows = out.out.splitlines()
    assert rows[0].startswith(f"{small}\t") and "ERROR" not in rows[0]
    assert (
        rows[1] == f"{large}\tERROR\timage is 40 x 40 = 1,600 pixels, more than the limit of 1,000: pass "
        "--max-pixels N to decode it"
    ), rows
    assert max_pixels() == 40_000_000  # the command's own limit ends with it
    assert main(["predict", tiny_best, str(small), str(large)]) == 0 and "ERROR" not in capsys.readouterr().out
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(folder / "large.png")
    Image.new("RGB", (16, 16)).save(folder / "small.png")
    assert main(["check", str(tmp_path / "data"), "--json", "--max-pixels", "1000"]) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert "more than the limit of 1,000" in json.dumps(report) and "small.png" not in json.dumps(report["errors"])


def test_inference_precision_is_one_declaration():
    for command in ("evaluate", "predict", "select", "serve"):
        spec = dict((n, s) for n, s, _ in declared(commands.BY_NAME[command].options))["precision"]
        assert spec.origin is shared.PRECISION, command


def test_every_device_flag_has_the_one_help(capsys):
    helps = {}
    for name, p in _subparsers().items():
        for action in p._actions:
            if "--device" in action.option_strings:
                helps[name] = action.help
    assert len(helps) >= 10
    assert all(h.startswith(shared.DEVICE.help) for h in helps.values()), helps


# ---------------------------------------------------------------------------------------------- the table


def test_one_table_of_commands():
    names = [c.name for c in commands.TABLE]
    assert len(names) == len(set(names))
    assert list(_subparsers()) == names  # the parser lists the table, in its order
    assert set(COMMANDS) == set(names)
    for c in commands.TABLE:
        module, function = c.run.split(":")
        assert module.startswith("imgclf.cli.run_") and function.endswith("_command"), c.run
        assert dataclasses.is_dataclass(c.options) and dataclasses.fields(c.options), c.name
        assert c.help and not c.help.endswith("."), c.name


def test_each_command_function_exists():
    import importlib

    for c in commands.TABLE:
        module, function = c.run.split(":")
        assert callable(getattr(importlib.import_module(module), function)), c.run


def test_a_command_gets_its_options_object(monkeypatch):
    got = []
    monkeypatch.setitem(COMMANDS, "calibrate", lambda o: got.append(o) or 0)
    assert main(["calibrate", "w.pt", "--batch-size", "8", "--json"]) == 0
    (o,) = got
    assert type(o).__name__ == "CalibrateOptions"
    assert (o.weights, o.batch_size, o.json, o.split, o.device, o.workers) == ("w.pt", 8, True, "val", "auto", None)


def test_train_options_are_the_config_made_from_flags_and_file(monkeypatch, tmp_path):
    got = []
    monkeypatch.setitem(COMMANDS, "train", lambda o: got.append(o) or 0)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 7\nlr: 0.5\n")
    assert main(["train", "--config", str(cfg), "--lr", "0.1", "--no-pretrained"]) == 0
    t = got[0].train
    assert isinstance(t, TrainConfig) and (t.epochs, t.lr, t.pretrained) == (7, 0.1, False)
    assert t.explicit == {"epochs", "lr", "pretrained"}


# ---------------------------------------------------------------------------------------------- groups


def _groups(p: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {g.title: [s for a in g._group_actions for s in a.option_strings] for g in p._action_groups}


def test_train_help_has_the_configs_sections(capsys):
    groups = _groups(_subparsers()["train"])
    for title, flags in {
        "data": ["--data", "--data-root", "--val-fraction"],
        "model": ["--model", "--pretrained", "--img-size", "--augment", "--balance"],
        "optimisation": ["--epochs", "--lr", "--time-budget"],
        "adversarial training and curriculum learning": ["--adv-train", "--curriculum", "--difficulty"],
        "machinery": ["--device", "--workers", "--cache", "--seed"],
        "outputs": ["--out", "--name", "--resume", "--log-every"],
    }.items():
        assert set(flags) <= set(groups[title]), (title, groups[title])
    assert {"--config", "--nproc", "--recipe", "-v"} <= set(groups["options"])
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "\noptimisation:\n" in text and "\nmachinery:\n" in text


def test_serve_and_export_help_have_groups():
    serve = _groups(_subparsers()["serve"])
    assert {"--port", "--max-concurrency"} <= set(serve["network"])
    assert {"--max-files", "--min-confidence"} <= set(serve["requests"])
    assert {"--device", "--precision", "--no-explain"} <= set(serve["model"])
    export = _groups(_subparsers()["export"])
    assert set(export["options only some formats take (see --format)"]) == {
        "--" + name.replace("_", "-") for name in format_options()
    } | {"--no-reduce-range"}


# ---------------------------------------------------------------------------------------------- export formats


def test_each_format_names_the_options_it_takes(capsys):
    assert FORMATS["onnx"].options == ("opset",)
    assert set(FORMATS["onnx-int8"].options) == {
        "opset",
        "calib_images",
        "calib_method",
        "int8_tries",
        "int8_target",
        "reduce_range",
    }
    assert FORMATS["torchscript"].options == FORMATS["pt2"].options == FORMATS["dynamic-int8"].options == ()
    names = {n for n, _, _ in declared(ExportOptions)}
    assert set(format_options()) <= names  # every format's option is a flag of export
    assert main(["export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "onnx takes --opset; onnx-int8 takes --opset, --calib-images, --calib-method, --int8-tries" in text


@pytest.mark.parametrize(
    "fmt, flags, named",
    [
        ("pt2", ["--opset", "18"], "--opset (only onnx, onnx-int8 take it)"),
        ("onnx", ["--calib-images", "8"], "--calib-images (only onnx-int8 takes it)"),
        ("torchscript", ["--no-reduce-range"], "--reduce-range (only onnx-int8 takes it)"),
        (
            "dynamic-int8",
            ["--calib-method", "minmax", "--int8-tries", "2"],
            "--calib-method (only onnx-int8 takes it), --int8-tries",
        ),
    ],
)
def test_an_option_its_format_does_not_take_is_said_before_any_work(capsys, tmp_path, fmt, flags, named):
    missing = tmp_path / "nope.pt"  # said before the checkpoint is even looked for, which then fails as usual
    assert main(["export", str(missing), "--format", fmt, *flags, "--out", str(tmp_path / "o" / "m")]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"warning: --format {fmt} ignores ") and named in first, first
    assert not (tmp_path / "o").exists()


def test_the_formats_that_take_an_option_accept_it():
    given = frozenset(
        {"opset", "calib_images", "calib_method", "int8_tries", "int8_target", "reduce_range", "verify_images"}
    )
    ExportOptions(weights="w", format="onnx-int8").check(given)
    ExportOptions(weights="w", format="onnx").check(frozenset({"opset", "verify_images", "calib_data", "tta"}))
    ExportOptions(weights="w", format="no-such-format").check(given)  # export() names the unknown format


# ---------------------------------------------------------------------------------------------- serve


def _dests(p: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.help for a in p._actions if a.dest not in ("help", "command")}


def test_both_serve_parsers_come_from_the_one_declaration():
    full, slim_parser = _dests(_subparsers()["serve"]), _dests(slim.build_parser())
    assert set(slim_parser) == {f.name for f in dataclasses.fields(ServeOptions)}
    assert set(full) == {f.name for f in dataclasses.fields(ServeCommandOptions)}
    assert set(full) - set(slim_parser) == {"precision"}
    for name, text in slim_parser.items():
        assert full[name] == text, name  # the same help, from the same field
    assert commands.BY_NAME["serve"].options is ServeCommandOptions


def test_slim_parser_checks_the_declared_ranges_after_parsing(capsys):
    assert slim.main(["model.onnx", "--max-concurrency", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-concurrency must be at least 1, not 0"
    assert slim.main(["model.onnx", "--header-timeout", "-1"]) == 2
    assert "--header-timeout must be above 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- no torch

NO_TORCH = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from imgclf.cli.main import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes = [main(argv) for argv in json.loads(sys.argv[1])]
    print(json.dumps({"codes": codes, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
    """
)


def test_help_and_check_import_no_torch(tmp_path, make_folder):
    data = make_folder(tmp_path / "d", n=3)
    argvs = [["--help"], ["train", "--help"], ["export", "--help"], ["serve", "--help"], ["check", str(data), "-q"]]
    res = subprocess.run(
        [sys.executable, "-c", NO_TORCH, json.dumps(argvs)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "IMGCLF_CACHE": str(tmp_path / "cache")},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["codes"] == [0, 0, 0, 0, 0] and got["torch"] == [], got
