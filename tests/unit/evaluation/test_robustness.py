"""`imgclf robustness`: FGSM / PGD in pixel units and CIFAR-10-C corruptions, on the tiny trained model."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, train_tiny, usage_error

from imgclf.cli.main import main
from imgclf.core.errors import UsageError
from imgclf.core.options import parse_eps
from imgclf.evaluation.command import evaluate
from imgclf.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from imgclf.evaluation.robustness import PixelModel, fgsm, pgd, robustness
from imgclf.infer.runtime import open_model


@pytest.fixture(scope="module")
def many(tmp_path_factory, make_folder):
    """60 test images (20 per class) in the colours the tiny model was trained on: enough for the attacks'
    accuracies to be more than a coin or two."""
    return make_folder(
        tmp_path_factory.mktemp("many") / "pets", classes=TINY_CLASSES, n=2, n_val=2, n_test=20, size=16, seed=5
    )


def _batch(tiny_best, data, n=12):
    """(PixelModel, [0, 1] images, labels) of the first n test images, as robustness() decodes them."""
    from imgclf.evaluation.robustness import _load_split

    runner = open_model(tiny_best, precision="fp32")
    images, labels, _, _ = _load_split(runner, str(data), "test", n, None, 0, "memory")
    p = runner.preprocess
    model = PixelModel(runner.model, p.mean, p.std).eval()
    return runner, model, images.float() / 255, labels


# ----------------------------------------------------------------------------------------------- attacks


def test_eps_zero_is_evaluate_accuracy(tiny_best, tiny_data, tmp_path):
    m = evaluate(tiny_best, str(tiny_data), split="test", out=str(tmp_path / "eval"), plots=False, workers=0)
    r = robustness(
        tiny_best, str(tiny_data), attacks="fgsm,pgd", eps="0,8/255", steps=2, out=str(tmp_path / "r"), workers=0
    )
    assert r["num_images"] == m["num_images"] == 9
    assert r["clean_accuracy"] == m["accuracy"]
    for rows in r["attacks"]["results"].values():
        assert rows[0]["eps"] == 0 and rows[0]["accuracy"] == m["accuracy"]
        assert [row["eps_label"] for row in rows] == ["0", "8/255"]


def test_normalising_inside_the_model_is_what_evaluate_feeds(tiny_best, tiny_data):
    """The attacked [0, 1] image, normalised inside the model call, gives the logits evaluation batches give."""
    from imgclf.data.batches import BatchTransform

    runner, model, x, _ = _batch(tiny_best, tiny_data)
    p = runner.preprocess
    tf = BatchTransform(kind="eval", size=p.img_size, mean=p.mean, std=p.std)
    with torch.no_grad():
        ours = model(x)
    theirs = runner.logits(tf((x * 255).round().to(torch.uint8)))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(fgsm(model, x, torch.zeros(len(x), dtype=torch.long), 0.0), x)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adversarial_images_stay_in_the_eps_ball_and_in_range(attack, tiny_best, many):
    _, model, x, y = _batch(tiny_best, many, n=24)
    eps = 8 / 255
    gen = torch.Generator().manual_seed(0)
    adv = fgsm(model, x, y, eps) if attack == "fgsm" else pgd(model, x, y, eps, steps=5, generator=gen)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6
    assert (adv - x).abs().max() >= eps * 0.5  # it moved: the attack is not a no-op
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model(x), y)
        after = torch.nn.functional.cross_entropy(model(adv), y)
    assert after > before  # an ascent on the loss


def test_pgd_is_seeded_and_its_step_size_is_used(tiny_best, many):
    _, model, x, y = _batch(tiny_best, many, n=12)
    runs = [pgd(model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    tiny_steps = pgd(model, x, y, 0.1, steps=1, step_size=1e-4, generator=torch.Generator().manual_seed(1))
    start = x + torch.empty(x.shape).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
    start = torch.max(torch.min(start, (x + 0.1).clamp(max=1)), (x - 0.1).clamp(min=0))
    assert (tiny_steps - start).abs().max() <= 1e-4 + 1e-6  # one step of 1e-4 from the random start


def test_accuracy_falls_with_eps_and_pgd_is_at_most_fgsm(tiny_best, many, tmp_path):
    eps = [0.05, 0.1, 0.2, 0.4]
    r = robustness(tiny_best, str(many), attacks=["fgsm", "pgd"], eps=eps, steps=10, out=str(tmp_path), workers=0)
    res = r["attacks"]["results"]
    fg, pg = [row["accuracy"] for row in res["fgsm"]], [row["accuracy"] for row in res["pgd"]]
    assert r["num_images"] == 60 and r["clean_accuracy"] >= 0.9
    assert all(a >= b for a, b in zip(pg, pg[1:])), pg
    assert all(p <= f for p, f in zip(pg, fg)), (pg, fg)
    assert pg[-1] < r["clean_accuracy"]  # the attack does something at the largest eps
    assert [row["step_size"] for row in res["pgd"][1:]] == pytest.approx([2.5 * e / 10 for e in eps])


def test_a_model_with_test_time_augmentation_is_attacked_through_it(tmp_path, make_folder):
    """airnet's eval forward averages 6 flipped and shifted views: the attack goes through that forward."""
    from imgclf.models.checkpoint import make_checkpoint, save_checkpoint
    from imgclf.models.registry import build_model, get_spec

    spec = get_spec("airnet_small")
    data = make_folder(tmp_path / "d", classes=("a", "b"), n=2, n_val=2, n_test=3, size=32)
    ck = make_checkpoint(
        build_model("airnet_small", 2).eval(),
        model_name="airnet_small",
        classes=["a", "b"],
        preprocess=spec.preprocess(),
        config={},
    )
    save_checkpoint(ck, str(tmp_path / "air.pt"))
    r = robustness(str(tmp_path / "air.pt"), str(data), attacks="fgsm", eps="8/255", out=str(tmp_path / "r"), workers=0)
    assert r["attacks"]["eval_views"] == 6 and "6 views" in r["attacks"]["forward"]
    runner = open_model(str(tmp_path / "air.pt"))
    p = runner.preprocess
    x = torch.rand(2, 3, 32, 32)
    normalised = (x - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)
    with torch.no_grad():
        attacked = PixelModel(runner.model, p.mean, p.std)(x)
        one_view = runner.model.logits(normalised)
    torch.testing.assert_close(attacked, runner.logits(normalised), rtol=1e-4, atol=1e-5)  # the eval forward
    assert not torch.allclose(attacked, one_view, atol=1e-4)  # which is not the plain one-view forward


# ----------------------------------------------------------------------------------------------- corruptions


def _images(image_of_class, n=6, size=32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    arrs = [np.asarray(image_of_class(i % 3, size, rng=rng)) for i in range(n)]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def test_corruptions_are_seeded_per_image(image_of_class):
    x = _images(image_of_class, n=8)
    for name in ("gaussian_noise", "shot_noise"):
        a, b = corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=0)
        assert torch.equal(a, b) and not torch.equal(a, corrupt(x, name, 3, seed=1))
        halves = torch.cat([corrupt(x[:3], name, 3, seed=0), corrupt(x[3:], name, 3, seed=0, indices=range(3, 8))])
        assert torch.equal(halves, a)  # the same noise whatever the batches


def test_every_corruption_grows_with_severity(image_of_class):
    x = _images(image_of_class)
    for name in CORRUPTIONS:
        dist = [(corrupt(x, name, s).float() - x.float()).abs().mean().item() for s in SEVERITIES]
        assert dist[0] > 0, name
        assert all(a <= b + 0.05 for a, b in zip(dist, dist[1:])), (name, dist)


def test_brightness_is_their_hsv_round_trip(image_of_class):
    x = _images(image_of_class, n=2, size=8)
    x[0, :, 0, 0] = 0  # a black pixel becomes the grey of the shift
    out = corrupt(x, "brightness", 5)  # + 0.3 on V
    for n, i, j in [(0, 0, 0), (0, 3, 4), (1, 7, 2), (1, 5, 5)]:
        h, s, v = colorsys.rgb_to_hsv(*(x[n, :, i, j].double() / 255).tolist())
        want = np.array(colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))) * 255
        assert np.abs(out[n, :, i, j].numpy() - want).max() <= 0.5 + 1e-6


def test_gaussian_blur_is_their_scipy_filter(image_of_class):
    from scipy.ndimage import gaussian_filter

    x = _images(image_of_class, n=2, size=12)
    for sev in (1, 5):
        sigma = CORRUPTIONS["gaussian_blur"].params[sev - 1]
        # skimage.filters.gaussian(multichannel=True): no blur across channels, edge mode 'nearest', truncate 4
        want = gaussian_filter(x.double().numpy() / 255, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        got = corrupt(x, "gaussian_blur", sev).double().numpy() / 255
        assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6


def test_corruption_table_is_reproducible(tiny_best, tiny_data, tmp_path):
    kw = dict(corruptions=True, severities=(1, 5), workers=0)
    a = robustness(tiny_best, str(tiny_data), out=str(tmp_path / "a"), **kw)
    b = robustness(tiny_best, str(tiny_data), out=str(tmp_path / "b"), **kw)
    assert a["corruptions"] == b["corruptions"]
    assert set(a["corruptions"]["results"]) == set(CORRUPTIONS) and "attacks" not in a
    assert (tmp_path / "a" / "robustness.json").is_file() and (tmp_path / "a" / "robustness.png").is_file()


def test_an_export_gets_corruptions_and_a_one_line_refusal_for_attacks(tiny_best, tiny_data, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from imgclf.exporting.export import export

    onnx = export(tiny_best, "onnx", out=str(tmp_path / "m.onnx"), calib_images=16, verify_images=8)["out"]
    r = robustness(onnx, str(tiny_data), corruptions=True, severities="1,3", workers=0, out=str(tmp_path / "c"))
    assert (
        r["format"] == "onnx"
        and r["clean_accuracy"]
        == evaluate(onnx, str(tiny_data), split="test", plots=False, out=str(tmp_path / "e"), workers=0)["accuracy"]
    )
    for row in r["corruptions"]["results"].values():
        assert set(row["accuracy"]) == {"1", "3"} and all(0 <= v <= 1 for v in row["accuracy"].values())
    line = usage_error(
        capsys, ["robustness", onnx, "--data", str(tiny_data), "--attack", "pgd", "--out", str(tmp_path / "x")]
    )
    assert "gradients" in line and "onnx" in line and "checkpoint" in line
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------- command line


def test_cli_writes_json_plot_and_table(tiny_best, tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["robustness", tiny_best, "--data", str(tiny_data), "--attack", "fgsm,pgd", "--eps", "4/255,0.1"]
    rc = main(argv + ["--steps", "2", "--corruptions", "--severities", "2", "--limit", "5", "--out", str(out)])
    table = capsys.readouterr().out
    assert rc == 0 and "pgd-2" in table and "eps 4/255" in table and "gaussian_noise" in table
    r = json.loads((out / "robustness.json").read_text())
    assert r["num_images"] == 5 and r["limit"] == 5 and r["split"] == "test" and r["format"] == "checkpoint"
    assert [row["eps"] for row in r["attacks"]["results"]["pgd"]] == pytest.approx([0, 4 / 255, 0.1])
    assert (out / "robustness.png").stat().st_size > 0


def test_the_default_split_is_test_where_there_is_one_else_val(tmp_path, capsys):
    """Issue 22, defect 13: `imgclf robustness W --attack fgsm,pgd` on a digits run (train and val, no test)
    failed on the default --split test. The default is now the data's held-out split: val for digits (test where
    the data has one: the tiny data's, in the test above)."""
    train_tiny(tmp_path, "digits", "d", epochs=1)
    best = str(tmp_path / "runs" / "d" / "best.pt")
    rc = main(["robustness", best, "--attack", "fgsm,pgd", "--eps", "4/255", "--steps", "2", "--limit", "12", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["split"] == "val" and r["num_images"] == 12
    assert r["out"].endswith("robustness-val") and set(r["attacks"]["results"]) == {"fgsm", "pgd"}


def test_limit_takes_images_of_every_class_not_the_first_n(tiny_best, tiny_data, tmp_path):
    """A folder split is sorted by class: the first 3 of the tiny test split are all cats."""
    r = robustness(tiny_best, str(tiny_data), corruptions=True, severities="1", limit=3, out=str(tmp_path), workers=0)
    runner = open_model(tiny_best)
    from imgclf.evaluation.robustness import _load_split

    _, labels, _, _ = _load_split(runner, str(tiny_data), "test", 3, None, 0, "memory")
    assert r["num_images"] == 3 and len(set(labels.tolist())) > 1
    again = _load_split(runner, str(tiny_data), "test", 3, None, 0, "memory")[1]
    assert torch.equal(labels, again)  # the same choice every time


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--attack", "fgs"], ["unknown attack 'fgs'", "did you mean 'fgsm'"]),
        (["--attack", "pgd", "--eps", "8/0"], ["'8/0' is not a number"]),
        (["--attack", "pgd", "--eps", "eight"], ["'eight' is not a number"]),
        (["--attack", "pgd", "--eps", "2"], ["outside [0, 1]"]),
        (["--attack", "pgd", "--eps", "-0.1"], ["outside [0, 1]"]),
        (["--attack", "pgd", "--step-size", "1/255,2/255"], ["one value"]),
        (["--corruptions", "--severities", "6"], ["from 1 to 5"]),
        ([], ["nothing to measure"]),
        (["--attack", "pgd", "--steps", "0"], ["--steps"]),
    ],
)
def test_usage_errors_are_one_line_before_any_work(extra, words, tiny_best, tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    line = usage_error(capsys, ["robustness", tiny_best, "--data", str(tiny_data), "--out", str(out), *extra])
    assert all(w in line for w in words), line
    assert not out.exists()


def test_missing_data_is_one_line(tiny_best, tmp_path, capsys):
    line = usage_error(capsys, ["robustness", tiny_best, "--data", str(tmp_path / "nope"), "--corruptions"])
    assert "nope" in line


def test_eps_parses_fractions_and_decimals():
    assert parse_eps("8/255, 0.03,0") == [0.0, 0.03, 8 / 255]
    with pytest.raises(UsageError):
        parse_eps(" , ")
