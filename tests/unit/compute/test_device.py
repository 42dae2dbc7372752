"""Precision `auto`: fp32 for inference everywhere; for training, the rule or the cached probe. And `imgclf env`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from imgclf.cli.main import main
from imgclf.compute import device as dev
from imgclf.compute.machine import git_commit
from imgclf.models.registry import build_model

pytestmark = pytest.mark.kernels

CPU = torch.device("cpu")


def test_inference_auto_is_fp32_on_every_machine():
    # bf16 autocast on a CPU with AVX512-BF16 changed labels: inference never opts into it by itself
    assert dev.resolve_precision("auto", CPU) is None
    assert dev.resolve_precision(None, CPU) is None
    assert dev.resolve_precision("bf16", CPU) is torch.bfloat16
    with pytest.raises(dev.UsageError, match="fp16 needs a CUDA"):
        dev.resolve_precision("fp16", CPU)


def test_predictor_and_checkpoint_runner_default_to_fp32(tiny_best):
    from imgclf import Predictor

    assert Predictor(tiny_best, device="cpu").runner.extra["precision"] == "fp32"


def test_training_auto_without_native_bf16_is_fp32_without_probing(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path))
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    model = build_model("test_tiny", 3)
    assert dev.training_precision("auto", CPU, model, key="test_tiny", img_size=16, batch_size=8) is None
    assert not (tmp_path / "precision.json").exists()  # the rule decided: nothing was measured


def test_training_auto_with_native_bf16_probes_once_and_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path))
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    model = build_model("test_tiny", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    first = dev.probe_bf16(model, key="test_tiny", img_size=16, batch_size=8)
    assert not first["cached"] and first["choice"] in ("fp32", "bf16")
    # the choice follows the measured times, with fp32 winning anything within 5%
    assert (first["choice"] == "bf16") == (first["fp32_ms"] / first["bf16_ms"] >= dev.BF16_MIN_SPEEDUP - 1e-3)
    # the probe trained a copy: the model and the caller's random stream are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    again = dev.probe_bf16(model, key="test_tiny", img_size=16, batch_size=8)
    assert again["cached"] and again["choice"] == first["choice"]
    cache = json.loads((tmp_path / "precision.json").read_text())
    assert len(cache) == 1 and next(iter(cache)).startswith(dev.machine_key())
    want = torch.bfloat16 if first["choice"] == "bf16" else None
    assert dev.training_precision("auto", CPU, model, key="test_tiny", img_size=16, batch_size=8) is want
    assert "test_tiny|16px|batch 8|channels_last" in dev.cached_probes()


def test_explicit_training_precision_is_taken_as_given():
    assert dev.training_precision("fp32", CPU) is None
    assert dev.training_precision("bf16", CPU) is torch.bfloat16


def test_env_json_names_the_instruction_sets_and_auto_choices(capsys):
    assert main(["env", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["cpu"]["isa"]) == {"AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16", "AMX"}
    assert r["cpu"]["cores"] >= 1 and r["versions"]["torch"] == torch.__version__
    assert set(r["auto"]) == {"device", "train_precision", "inference_precision", "memory_layout", "int8_weights"}
    assert r["auto"]["inference_precision"].startswith("fp32")
    for key in ("intra_op", "inter_op"):
        assert r["threads"][key] >= 1


def test_env_text_starts_with_one_summary_line(capsys):
    assert main(["env"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("imgclf ") and " cores | " in first and "torch " in first


def test_env_probe_of_an_unknown_model_is_a_usage_error(capsys):
    assert main(["env", "--probe", "resnet81"]) == 2
    err = capsys.readouterr().err
    assert "resnet81" in err and len(err.strip().splitlines()) == 1


def test_a_slow_step_is_probed_at_a_smaller_batch_for_every_round(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path))
    monkeypatch.setattr(dev, "PROBE_STEP_SECONDS", 0.0)  # every step counts as slow
    r = dev.probe_bf16(build_model("test_tiny", 3), key="test_tiny", img_size=16, batch_size=32)
    assert r["probe_batch"] == 8 and r["rounds"] == dev.PROBE_ROUNDS


def test_git_commit_of_a_work_tree(tmp_path):
    assert git_commit(str(tmp_path)) is None  # not a work tree
    if shutil.which("git") is None:
        pytest.skip("no git")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("a")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    commit = git_commit(str(tmp_path))
    assert commit is not None and len(commit) == 40 and int(commit, 16) >= 0
    (tmp_path / "f").write_text("b")
    assert git_commit(str(tmp_path)) == commit + "+dirty"
