"""timm models as `timm:NAME`: building, freezing by stages, preprocessing from the pretrained config, weights
from a file or the Hugging Face cache offline, and the one-line errors. timm's own tiny `test_*` models keep
it fast; nothing is downloaded (a Hugging Face cache is laid out in tmp_path where one is needed)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from imgclf.cli.main import main
from imgclf.core.errors import UsageError, WeightsUnavailableError
from imgclf.data.pipeline import resolve_preprocess
from imgclf.models import timm_models
from imgclf.models.registry import REGISTRY, apply_frozen_eval, build_model, freeze, get_spec, parameter_table

HAVE_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason='timm is an optional extra: pip install -e ".[timm]"')
TINY = "timm:test_resnet"  # timm's own test model: 0.37 M parameters, 160 px pretrained config


@pytest.fixture(autouse=True)
def _fresh_specs():
    """Specs are cached per name; a test that hides timm must not leave (or see) another's."""
    timm_models.timm_spec.cache_clear()
    yield
    timm_models.timm_spec.cache_clear()


def _one_line_exit_2(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_without_timm_every_entry_point_says_how_to_install(monkeypatch, capsys, tmp_path, make_folder):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, as when not installed
    with pytest.raises(UsageError, match=r'pip install -e "\.\[timm\]"'):
        get_spec("timm:resnet18")
    with pytest.raises(UsageError, match="pip install"):
        "timm:resnet18" in REGISTRY  # noqa: B015 - what checkpoint.py asks of a checkpoint's model name
    data = make_folder(tmp_path / "d", classes=("a", "b"), n=4)
    err = _one_line_exit_2(
        capsys, ["train", "--data", str(data), "--model", "timm:resnet18", "--out", str(tmp_path / "runs")]
    )
    assert 'pip install -e ".[timm]"' in err
    assert not (tmp_path / "runs").exists()
    assert 'pip install -e ".[timm]"' in _one_line_exit_2(capsys, ["models", "--timm", "resnet*"])


@needs_timm
def test_unknown_timm_name_suggests_the_closest():
    with pytest.raises(UsageError) as ei:
        get_spec("timm:resnet81")
    msg = str(ei.value)
    assert "unknown timm model 'timm:resnet81'" in msg and "did you mean 'timm:resnet18'" in msg and "\n" not in msg
    assert "timm:resnet81" not in REGISTRY and "timm:resnet18" in REGISTRY


@needs_timm
def test_build_has_the_data_head_and_runs():
    torch.manual_seed(0)
    m = build_model(TINY, 3).eval()
    spec = get_spec(TINY)
    assert spec.head == "fc" and m.get_submodule("fc").out_features == 3
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    # the same seed builds the same model: a checkpoint's name and class count are enough to rebuild it
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), build_model(TINY, 3).state_dict().values()))


@needs_timm
def test_freeze_by_stages():
    m = build_model(TINY, 3)
    stages = get_spec(TINY).stages(m)
    assert [s for s, _ in stages] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    frozen = freeze(m, TINY, 2)
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4", "fc"}
    m.train()
    apply_frozen_eval(m, frozen)
    assert not m.layer1.training and not m.bn1.training and m.layer2.training
    rows = {r["block"]: r for r in parameter_table(m, TINY)}
    assert rows["layer1"]["trainable"] == 0 and rows["layer2"]["trainable"] == rows["layer2"]["params"] > 0
    assert sum(r["params"] for r in rows.values()) == sum(p.numel() for p in m.parameters())

    m = build_model(TINY, 3)
    freeze(m, TINY, "backbone")
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    with pytest.raises(UsageError, match="has 5 stages"):
        freeze(build_model(TINY, 3), TINY, 6)


@needs_timm
def test_freeze_a_vit_whose_stem_holds_bare_parameters():
    """cls_token and pos_embed sit on the model itself: frozen with the stem, and no module to put in eval."""
    name = "timm:test_vit"
    m = build_model(name, 3)
    frozen = freeze(m, name, 1)
    assert (
        not m.cls_token.requires_grad and not m.pos_embed.requires_grad and not m.patch_embed.proj.weight.requires_grad
    )
    assert m.blocks[0].attn.qkv.weight.requires_grad
    m.train()
    apply_frozen_eval(m, frozen)
    assert m.training and not m.patch_embed.training


@needs_timm
def test_preprocessing_from_the_pretrained_config():
    p = resolve_preprocess(get_spec("timm:resnet18"), img_size=None, pretrained=True, own_size=None)
    # timm's resnet18.a1_in1k: 224 px, crop_pct 0.95 -> shorter side floor(224 / 0.95) = 235, bicubic
    assert (p.img_size, p.resize, p.interpolation) == (224, 235, "bicubic")
    assert p.mean == [0.485, 0.456, 0.406] and p.std == [0.229, 0.224, 0.225]
    p = resolve_preprocess(get_spec(TINY), img_size=None, pretrained=True, own_size=None)
    assert (p.img_size, p.resize, p.interpolation) == (160, 168, "bilinear") and p.mean == [0.5, 0.5, 0.5]


def _fresh_state(name: str, seed: int, num_classes: int = 1000) -> dict:
    torch.manual_seed(seed)
    return build_model(name, num_classes).state_dict()


@needs_timm
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_gives_the_backbone_and_a_new_head(tmp_path, suffix):
    state = _fresh_state(TINY, 1)  # an "ImageNet" model: 1000 classes
    path = str(tmp_path / ("w" + suffix))
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)  # nested, as training scripts save them
    torch.manual_seed(2)
    m = build_model(TINY, 3, pretrained=True, weights_file=path)
    got = m.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (3, 96)


def test_weights_file_for_a_registry_model(tmp_path):
    """Not only timm: any model's backbone from a state dict, its head new."""
    state = _fresh_state("test_tiny", 1, num_classes=10)
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    m = build_model("test_tiny", 3, pretrained=True, weights_file=str(path))
    assert torch.equal(m.state_dict()["stem.0.weight"], state["stem.0.weight"]) and m.fc.out_features == 3


@needs_timm
def test_weights_file_errors_are_one_line_naming_the_file(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(UsageError) as ei:
        build_model(TINY, 3, pretrained=True, weights_file=missing)
    assert f"'{missing}' does not exist" in str(ei.value)
    other = tmp_path / "tiny.pth"
    torch.save(_fresh_state("test_tiny", 0), other)
    with pytest.raises(UsageError) as ei:
        build_model(TINY, 3, pretrained=True, weights_file=str(other))
    msg = str(ei.value)
    assert str(other) in msg and "does not fit timm:test_resnet" in msg and "missing" in msg and "\n" not in msg
    garbage = tmp_path / "g.pth"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(UsageError, match="cannot be read as a state dict"):
        build_model(TINY, 3, pretrained=True, weights_file=str(garbage))
    with pytest.raises(UsageError, match="add --pretrained"):
        build_model(TINY, 3, weights_file=str(other))


@needs_timm
def test_train_refuses_a_missing_weights_file_before_any_work(capsys, tmp_path, make_folder):
    data = make_folder(tmp_path / "d", classes=("a", "b"), n=4)
    missing = str(tmp_path / "nope.pth")
    out = tmp_path / "runs"
    err = _one_line_exit_2(
        capsys,
        ["train", "--data", str(data), "--model", TINY, "--pretrained", "--weights-file", missing, "--out", str(out)],
    )
    assert f"--weights-file '{missing}' does not exist" in err
    assert not out.exists()
    (tmp_path / "w.pth").write_bytes(b"x")
    err = _one_line_exit_2(
        capsys,
        ["train", "--data", str(data), "--model", TINY, "--weights-file", str(tmp_path / "w.pth"), "--out", str(out)],
    )
    assert "add --pretrained" in err and not out.exists()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline (HF_HUB_OFFLINE=1 as huggingface_hub read it)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _cache_weights(cache, repo: str, state: dict) -> None:
    """The layout huggingface_hub leaves after a download: refs/main -> snapshots/REV/model.safetensors."""
    from safetensors.torch import save_file

    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / ("0" * 40) / "model.safetensors"))


@needs_timm
def test_pretrained_offline_and_not_cached_is_one_line(hf_cache, capsys):
    with pytest.raises(WeightsUnavailableError) as ei:
        build_model(TINY, 3, pretrained=True)
    msg = str(ei.value)
    assert (
        "timm/test_resnet.r160_in1k" in msg and "--weights-file" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    )
    assert main(["models", "--timm", "test_res*"]) == 0
    assert "timm:test_resnet  not cached" in capsys.readouterr().out


@needs_timm
def test_pretrained_from_the_hf_cache_offline(hf_cache, capsys):
    state = _fresh_state(TINY, 1)
    _cache_weights(hf_cache, "timm/test_resnet.r160_in1k", state)
    m = build_model(TINY, 3, pretrained=True)
    got = m.state_dict()
    assert torch.equal(got["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]) and got["fc.weight"].shape == (
        3,
        96,
    )
    assert main(["models", "--timm", "test_res*"]) == 0
    assert "timm:test_resnet  yes" in capsys.readouterr().out
