"""Grad-CAM (imgclf.evaluation.explain): the maps, the layer found in each model family, and `imgclf explain`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.evaluation.explain import Explainer, NoFeatureMap, cam_on_image, find_target, gradcam, gradcam_logits
from imgclf.models.checkpoint import make_checkpoint, save_checkpoint
from imgclf.models.registry import build_model, get_spec

# ------------------------------------------------------------------------------------------ a model that can be read

SQUARE = (8, 0, 24, 16)  # left, top, right, bottom in the 48 x 32 picture: the top-left quarter of what the model sees


def _bright_dark_checkpoint(path) -> str:
    """`test_tiny` with weights set by hand: stem channel 0 fires on bright pixels, channel 1 on dark ones, the
    body passes both on, and the head scores class "bright" by the mean of channel 0 less that of channel 1, "dark"
    the other way round. Grad-CAM for "bright" must then lie on the bright square, and for "dark" off it."""
    model = build_model("test_tiny", 2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        stem, body = model.stem[0], model.body[0]
        stem.weight[0] = 1.0 / 27  # the mean of the normalised 3 x 3 x 3 patch: +2 on white, -2 on black
        stem.weight[1] = -1.0 / 27
        model.stem[1].weight.fill_(1.0)  # BatchNorm as the identity (running mean 0, variance 1)
        torch.nn.init.dirac_(body.weight[:2])
        # each class for its own channel and against the other: a map that ignored the sign of the channel
        # weights (or their gradients) would light up the whole picture
        model.fc.weight[0, :2] = torch.tensor([1.0, -1.0])
        model.fc.weight[1, :2] = torch.tensor([-1.0, 1.0])
    pre = {"img_size": 16, "resize": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    ckpt = make_checkpoint(model, model_name="test_tiny", classes=["bright", "dark"], preprocess=pre, config={})
    save_checkpoint(ckpt, str(path))
    return str(path)


def _square_picture(path) -> str:
    """48 x 32, black, with a white square: resized to 24 x 16 and centre-cropped to 16 x 16, the model sees
    original columns 8-39, and the square fills the top-left quarter of that."""
    a = np.zeros((32, 48, 3), np.uint8)
    left, top, right, bottom = SQUARE
    a[top:bottom, left:right] = 255
    Image.fromarray(a).save(path)
    return str(path)


@pytest.fixture(scope="module")
def bright_dark(tmp_path_factory):
    d = tmp_path_factory.mktemp("bright_dark")
    return _bright_dark_checkpoint(d / "bd.pt"), _square_picture(d / "square.png")


def _share_in_square(cam: np.ndarray) -> float:
    left, top, right, bottom = SQUARE
    return float(cam[top:bottom, left:right].sum() / cam.sum())


def test_the_map_lies_on_the_evidence_for_the_class_asked_for(bright_dark):
    weights, picture = bright_dark
    ex = Explainer(weights, device="cpu")
    bright, dark, default = (ex.explain([picture], t)[0] for t in ("bright", "dark", None))
    assert bright["cam"].shape == (32, 48)  # the original picture's size, not the model's 16 x 16
    assert _share_in_square(bright["cam"]) > 0.8
    assert _share_in_square(dark["cam"]) < 0.2
    # three quarters of the picture are dark: the model predicts "dark", and that is what it explains unasked
    assert default["label"] == default["target"] == "dark"
    np.testing.assert_allclose(default["cam"], dark["cam"], atol=1e-6)
    # the columns the centre crop cut off were never seen: no heat there, and the box says so
    assert tuple(bright["box"]) == (8, 0, 40, 32)
    assert not bright["cam"][:, :8].any() and not bright["cam"][:, 40:].any()


def test_maps_have_the_image_size_and_lie_in_0_1(tiny_best, tmp_path, image_of_class):
    rng = np.random.default_rng(0)
    sizes = [(16, 16), (40, 24), (23, 61), (9, 12)]  # (width, height): square, wide, tall, smaller than the crop
    paths = []
    for i, size in enumerate(sizes):
        paths.append(str(tmp_path / f"{i}.png"))
        image_of_class(i % 3, size, rng=rng).save(paths[-1])
    results = Explainer(tiny_best, device="cpu", batch_size=3).explain(paths)
    for (w, h), r in zip(sizes, results):
        assert r["cam"].shape == (h, w)
        assert r["cam"].dtype == np.float32
        assert r["cam"].min() >= 0.0 and r["cam"].max() <= 1.0
        assert r["cam"].max() in (0.0, pytest.approx(1.0, abs=1e-3))  # each map scaled to its own peak, or all 0


def test_a_turned_photo_is_explained_upright_from_a_file_and_from_memory(tiny_best, tmp_path):
    """EXIF orientation 6 (turned 90 degrees): the model sees the photo upright, so the map is upright too."""
    path = tmp_path / "turned.jpg"
    im = Image.new("RGB", (40, 24), (200, 40, 40))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif)
    with Image.open(path) as opened:
        from_file, from_memory = Explainer(tiny_best, device="cpu").explain([str(path), opened])
    assert from_file["cam"].shape == from_memory["cam"].shape == (40, 24)
    assert from_file["image"].size == from_memory["image"].size == (24, 40)


def test_the_explained_input_is_what_predict_sees(tiny_best, tiny_data):
    from imgclf import Predictor

    paths = sorted(str(p) for p in (tiny_data / "val").rglob("*.*"))[:5]
    explained = Explainer(tiny_best, device="cpu").explain(paths)
    predicted = Predictor(tiny_best, device="cpu").predict(paths)
    for e, p in zip(explained, predicted):
        assert e["label"] == p["label"]
        assert e["probability"] == pytest.approx(p["probability"], abs=1e-6)


def test_gradcam_runs_the_same_forward_pass_as_the_model(tiny_best):
    from imgclf.infer.runtime import open_model

    runner = open_model(tiny_best, device="cpu", precision="fp32")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps, logits, idx = gradcam_logits(runner.model, x)
    torch.testing.assert_close(logits, runner.logits(x), rtol=1e-4, atol=1e-5)
    assert idx.tolist() == logits.argmax(1).tolist()
    assert maps.shape == (4, 16, 16)
    assert all(p.grad is None for p in runner.model.parameters())  # the weights are left as they were


def test_crop_mapping_pads_like_the_centre_crop():
    """An image whose resized side is shorter than the crop is padded around (center_crop): the part of the map
    over the padding falls outside the image."""
    cam = torch.zeros(16, 16)
    cam[:, 3:13] = 1.0  # the 10 columns of a 10-wide image padded 3 + 3 to 16
    full, box = cam_on_image(cam, (16, 10), (10, 16))
    assert full.shape == (16, 10) and box == (0, 0, 10, 16)
    np.testing.assert_allclose(full, 1.0)


# ------------------------------------------------------------------------------------------ the layer, per family


def _built(name: str, meta: bool):
    if meta:  # the layer is found from shapes alone: a large model costs nothing on the meta device
        with torch.device("meta"):
            return build_model(name, 3).eval()
    torch.manual_seed(0)
    return build_model(name, 3).eval()


@pytest.mark.parametrize(
    "name, meta, module, where, source",
    [
        ("test_tiny", False, "body.2", "input", "body.1"),
        ("smallcnn", False, "block3.2", "input", "block3.1"),
        ("airnet", False, "pool", "input", "block3"),
        ("resnet18", False, "avgpool", "input", "layer4"),
        ("resnet50", True, "avgpool", "input", "layer4"),
        ("vgg16", True, "avgpool", "output", None),  # no global pooling: the flattened 7 x 7 map feeds the classifier
        ("efficientnet_b0", True, "avgpool", "input", "features"),
        ("efficientnet_lite0", True, "_avg_pooling", "input", "_swish"),  # after the head's ReLU6 (a shared module)
    ],
)
def test_the_last_feature_map_is_found_in_every_registered_family(name, meta, module, where, source):
    model = _built(name, meta)
    size = get_spec(name).img_size if get_spec(name).small else 64
    x = torch.zeros(1, 3, size, size, device="meta" if meta else "cpu")
    t = find_target(model, x, name)
    assert (t.module, t.where, t.source) == (module, where, source)
    if not meta:
        maps = gradcam(model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)), layer=t)
        assert maps.shape == (2, size, size) and 0.0 <= float(maps.min()) and float(maps.max()) <= 1.0


def test_built_in_test_time_augmentation_is_off_for_the_map_and_back_on_after():
    model = _built("airnet", False)
    assert model.tta
    gradcam(model, torch.randn(1, 3, 32, 32))
    assert model.tta is True  # one view for the map (six would each run the hooked layer), restored after


def test_a_model_in_training_mode_is_explained_in_eval_mode_and_left_as_it_was():
    model = _built("smallcnn", False).train()
    bn = model.block1[0][1]
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = gradcam(model, x)
    assert model.training and bn.training
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    torch.testing.assert_close(maps, gradcam(model.eval(), x))


@pytest.mark.parametrize(
    "name, module, source",
    [
        ("timm:resnet18", "global_pool.pool", "layer4"),
        ("timm:convnext_atto", "head.global_pool.pool", "norm_pre"),
        ("timm:efficientnet_b0", "global_pool.pool", "bn2"),
    ],
)
def test_timm_convolutional_models(name, module, source):
    pytest.importorskip("timm")
    t = find_target(_built(name, True), torch.zeros(1, 3, 64, 64, device="meta"), name)
    assert (t.module, t.where, t.source) == (module, "input", source)


@pytest.mark.parametrize("name", ["timm:vit_tiny_patch16_224", "timm:swin_tiny_patch4_window7_224"])
def test_token_models_are_refused_in_one_line(name):
    """A ViT's last stage works on tokens; Swin's maps are N x h x w x C: neither has a map Grad-CAM can read."""
    pytest.importorskip("timm")
    with pytest.raises(NoFeatureMap) as e:
        find_target(_built(name, True), torch.zeros(1, 3, 224, 224, device="meta"), name)
    assert isinstance(e.value, UsageError) and "\n" not in str(e.value) and name in str(e.value)


def test_a_model_without_any_feature_map_is_refused():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(NoFeatureMap, match="no convolutional feature map"):
        find_target(model, torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------ the command


def _picture(path, image_of_class, size=(40, 24)):
    image_of_class(0, size, rng=np.random.default_rng(0)).save(path)
    return str(path)


def test_cli_writes_an_overlay_per_image_a_sheet_and_json(tiny_best, tmp_path, image_of_class, capsys):
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    first = _picture(folder / "a" / "1.png", image_of_class)
    second = _picture(folder / "b" / "1.png", image_of_class, size=(17, 30))
    out = tmp_path / "cams"
    assert main(["explain", tiny_best, str(folder), "--out", str(out), "--sheet", "--target", "dog", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [first, second]
    assert all("map for dog" in ln for ln in lines)
    made = sorted(os.listdir(out))
    assert made == ["1_gradcam-2.png", "1_gradcam.png", "explain.json", "gradcam_sheet.png"]  # same stems kept apart
    with Image.open(out / "1_gradcam-2.png") as im:
        assert im.size == (17, 30) and im.mode == "RGB"  # drawn over the original image, at its size
    rows = json.loads((out / "explain.json").read_text())["rows"]
    assert [r["target"] for r in rows] == ["dog", "dog"]


def test_cli_explains_the_good_images_and_fails_at_the_end_for_the_bad(tiny_best, tmp_path, image_of_class, capsys):
    good = _picture(tmp_path / "good.png", image_of_class)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = str(tmp_path / "missing.png")
    out = tmp_path / "cams"
    assert main(["explain", tiny_best, missing, str(broken), good, "--out", str(out), "-q"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == f"{missing}\tERROR\tfile not found"
    assert lines[1].startswith(f"{broken}\tERROR\t")
    assert lines[2].startswith(good + "\t") and lines[2].endswith(str(out / "good_gradcam.png"))
    assert (out / "good_gradcam.png").is_file()
    assert "2 of 3 images could not be explained" in captured.err


@pytest.fixture(scope="module")
def exported(tiny_best, tmp_path_factory):
    from imgclf.exporting.export import export

    out = tmp_path_factory.mktemp("explain_export") / "m.ts"
    return export(tiny_best, "torchscript", out=str(out), calib_images=8, verify_images=4)["out"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--target", "wolf"], ["'wolf' is not a class", "cat, dog, fox"]),
        (["--max-side", "0"], ["--max-side"]),
        (["--out", "{file}"], ["is a file"]),
        (["{empty}"], ["holds no image files"]),
        (["{export}"], ["exported file (torchscript)", "checkpoint"]),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, words, tiny_best, tmp_path, image_of_class, exported, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    picture = _picture(tmp_path / "p.png", image_of_class)
    weights = exported if args == ["{export}"] else tiny_best
    args = [a.format(file=tmp_path / "file" / "sub", empty=tmp_path / "empty", export="") for a in args]
    argv = ["explain", weights, picture] + [a for a in args if a]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "explain").exists() and not os.path.exists(os.path.join(os.path.dirname(weights), "explain"))


def test_overlays_are_drawn_at_the_size_they_are_shown(tiny_best, tmp_path, image_of_class):
    import io

    from imgclf.evaluation.explain import explain

    picture = _picture(tmp_path / "wide.png", image_of_class, size=(40, 24))
    r = explain(tiny_best, [picture], out=str(tmp_path / "cams"), max_side=20)
    with Image.open(r["rows"][0]["overlay"]) as im:
        assert im.size == (20, 12)
    png, info = Explainer(tiny_best, device="cpu").overlay_png(Image.open(picture), target="fox", max_side=30)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (30, 18)
    assert info["target"] == "fox" and "cam" not in info and "image" not in info
    json.dumps(info)  # plain types, for a JSON answer


def test_an_81_megapixel_jpeg_is_refused_by_default_and_the_others_explained(tiny_best, tmp_path, capsys):
    """Issue 22, defect 18: `explain` on an 81 MP JPEG decoded it whole (1.7 GB at its peak): the CLI had no pixel
    limit while `serve` had 40 MP. Now every command that decodes files refuses it from its header, one line for
    it, the other images explained; --max-pixels raises the limit (here lowered, to refuse a small one too)."""
    big = tmp_path / "big.jpg"
    Image.new("L", (9000, 9000), 128).save(big, "JPEG", quality=50)  # 81 MP, flat: small on disk
    assert big.stat().st_size < 3_000_000
    good = str(tmp_path / "good.png")
    Image.new("RGB", (20, 24), (200, 40, 40)).save(good)
    out = tmp_path / "cams"
    assert main(["explain", tiny_best, str(big), good, "--out", str(out), "-q"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == (
        f"{big}\tERROR\timage is 9,000 x 9,000 = 81,000,000 pixels, more than the limit of 40,000,000: "
        "pass --max-pixels N to decode it"
    )
    assert lines[1].startswith(good + "\t") and (out / "good_gradcam.png").is_file()
    assert "1 of 2 images could not be explained" in captured.err and "Traceback" not in captured.err
    # the flag is the limit: 400 pixels refuse the 480-pixel image too
    assert main(["explain", tiny_best, good, "--out", str(tmp_path / "c2"), "-q", "--max-pixels", "400"]) == 1
    assert "more than the limit of 400" in capsys.readouterr().out


def test_cli_rows_escape_names_as_predicts_do(tiny_best, tmp_path, capsys):
    """Issue 22, defect 12, for explain's table too: a file name with a newline prints as one escaped row."""
    odd = tmp_path / "new\nline.png"
    Image.new("RGB", (20, 24), (40, 200, 40)).save(odd)
    assert main(["explain", tiny_best, str(odd), "--out", str(tmp_path / "cams"), "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(odd).replace("\n", "\\n") + "\t"), lines
