"""Shared fixtures: tiny synthetic image folders, and one tiny model trained once per test session.

Everything here is written into pytest's tmp folders; nothing is downloaded and ../shared is never read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Decoded-image caches go to a temporary folder, never the user's ~/.cache (subprocesses inherit it)."""
    import os

    old = os.environ.get("IMGCLF_CACHE")
    os.environ["IMGCLF_CACHE"] = str(tmp_path_factory.mktemp("imgclf-cache"))
    yield
    if old is None:
        os.environ.pop("IMGCLF_CACHE", None)
    else:
        os.environ["IMGCLF_CACHE"] = old


# One clearly different colour per class, so that even `test_tiny` can learn the classes in a few steps.
PALETTE = [
    (220, 40, 40),
    (40, 200, 40),
    (40, 40, 220),
    (220, 220, 40),
    (200, 40, 200),
    (40, 200, 200),
    (128, 128, 128),
    (250, 150, 50),
]


def class_image(class_index: int, size: int | tuple[int, int] = 16, *, rng: np.random.Generator) -> Image.Image:
    """An RGB image whose colour says its class, plus Gaussian noise (sigma 20 grey levels)."""
    w, h = (size, size) if isinstance(size, int) else size
    base = np.asarray(PALETTE[class_index % len(PALETTE)], dtype=np.float64)
    arr = np.clip(base[None, None, :] + rng.normal(0.0, 20.0, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def smooth_field(
    seed: int, size: int = 96, *, scales=((4, 1.0), (8, 0.5), (16, 0.25)), tint: int | None = None
) -> Image.Image:
    """A smooth random colour field: structure at a few scales (cells, weight), as a photo has, not pixel noise;
    `tint`: a channel (0-2) raised by 90, e.g. a class's colour. For near-duplicate and perceptual-hash tests."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3))
    for cells, weight in scales:
        small = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        img += weight * np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=float)
    img /= sum(w for _, w in scales)
    if tint is not None:
        img[..., tint] += 90
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_class(folder: Path, class_index: int, n: int, size, exts, rng, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ext = exts[i % len(exts)]
        p = folder / f"{prefix}{i:03d}{ext}"
        class_image(class_index, size, rng=rng).save(p)
        out.append(p)
    return out


def make_image_folder(
    root,
    layout: str = "split",
    classes=("cat", "dog"),
    n: int = 12,
    size: int | tuple[int, int] = 16,
    *,
    n_val: int | None = None,
    n_test: int = 0,
    train_name: str = "train",
    val_name: str = "val",
    test_name: str = "test",
    val_classes=None,
    exts=(".png", ".jpg"),
    seed: int = 0,
) -> Path:
    """Write a tiny image folder and return its root.

    layout="split": ROOT/<train_name>/<class>/*, ROOT/<val_name>/<class>/* (n_val per class, default n // 3,
    at least 2), and ROOT/<test_name>/<class>/* when n_test > 0. `val_classes` limits the classes that get a
    val folder (to make a val split that lacks a class).
    layout="flat": ROOT/<class>/* with n images per class.
    The colour of each image depends on the class's position in `classes` (not on sorted order)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "flat":
        for ci, c in enumerate(classes):
            _write_class(root / c, ci, n, size, exts, rng)
        return root
    if layout != "split":
        raise ValueError(layout)
    n_val = max(2, n // 3) if n_val is None else n_val
    for ci, c in enumerate(classes):
        _write_class(root / train_name / c, ci, n, size, exts, rng, prefix="tr")
        if val_classes is None or c in val_classes:
            _write_class(root / val_name / c, ci, n_val, size, exts, rng, prefix="va")
        if n_test:
            _write_class(root / test_name / c, ci, n_test, size, exts, rng, prefix="te")
    return root


@pytest.fixture(scope="session")
def make_folder():
    """The factory above, as a fixture: `make_folder(tmp_path / "d", layout="flat", classes=("a", "b"))`."""
    return make_image_folder


@pytest.fixture(scope="session")
def image_of_class():
    """`image_of_class(class_index, size, rng=...)`: one synthetic image in the colour of that class."""
    return class_image


@pytest.fixture(autouse=True)
def _reset_cli_logging():
    """`imgclf.cli.main` binds a log handler to the sys.stderr of the test that called it (capsys's); drop it
    afterwards so a later test never logs into a closed capture stream."""
    yield
    log = logging.getLogger("imgclf")
    for h in list(log.handlers):
        if getattr(h, "_imgclf_cli", False):
            log.removeHandler(h)
    log.propagate = True
    log.setLevel(logging.NOTSET)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The test runs in its own tmp_path: what a command writes by default (runs/, eval folders) lands there. A
    module that needs it for every test says `pytestmark = pytest.mark.usefixtures("in_tmp")`."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def usage_error(capsys, argv) -> str:
    """`imgclf` with `argv`, in-process, must be a usage error: exit 2, one line on stderr, no traceback; that line."""
    from imgclf.cli.main import main

    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out
    return lines[0]


TINY_CLASSES = ("cat", "dog", "fox")

# The tiny training run, the one set of options every test that trains a model starts from: the `test_tiny`
# model, batches of 8, no worker processes, fp32 (the same numbers on every CPU). `tiny_run` trains it once per
# session, `train_tiny` through the Python API with a test's own options, `tiny_argv` spells it as CLI flags.
TINY_RUN = {"model": "test_tiny", "batch_size": 8, "workers": 0, "precision": "fp32"}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes, split layout with train (16 per class), val (6 per class) and test (3 per class), 16x16 px."""
    return make_image_folder(
        tmp_path_factory.mktemp("tinydata") / "pets", classes=TINY_CLASSES, n=16, n_val=6, n_test=3, size=16
    )


ML_LABELS = ("blue", "green", "red")  # sorted: the class order a multi-label manifest gives


def multilabel_image(labels, size: int = 16, *, rng: np.random.Generator) -> Image.Image:
    """An image that holds `labels` (indices into ML_LABELS) as coloured squares, each label in its own corner
    (blue top left, green top right, red bottom left) on a grey ground, plus noise: learnable by a tiny model."""
    img = np.full((size, size, 3), 128.0)
    half = size // 2
    corners = ((0, 0), (0, half), (half, 0))
    for k in labels:
        r, c = corners[k]
        img[r : r + half, c : c + half] = PALETTE[2 - k]
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_multilabel_manifest(root, *, n=(24, 10, 8), size=16, form="cells", seed=0) -> Path:
    """A multi-label CSV manifest in `root` (created): `n` = images in train, val, test, each holding every label of
    ML_LABELS with probability one half (some none, some all three). `form`: "cells" (path,labels,split with
    cells like 'blue|red') or "columns" (path,blue,green,red,split of 0/1). Returns the CSV's path."""
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head = "path,labels,split" if form == "cells" else "path," + ",".join(ML_LABELS) + ",split"
    rows = [head]
    for split, count in zip(("train", "val", "test"), n):
        for i in range(count):
            held = [k for k in range(3) if rng.random() < 0.5]
            name = f"img/{split}_{i}.png"
            multilabel_image(held, size, rng=rng).save(root / name)
            cell = (
                "|".join(ML_LABELS[k] for k in held)
                if form == "cells"
                else ",".join(str(int(k in held)) for k in range(3))
            )
            rows.append(f"{name},{cell},{split}")
    path = root / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def multilabel_csv(tmp_path_factory) -> Path:
    """A tiny multi-label manifest (make_multilabel_manifest): 24 train, 10 val, 8 test images of 16 px, labels
    blue, green and red as coloured corners; label cells like 'blue|red'."""
    return make_multilabel_manifest(tmp_path_factory.mktemp("multilabel") / "corners")


@pytest.fixture(scope="session")
def multilabel_ckpt(tmp_path_factory, multilabel_csv) -> str:
    """A multi-label checkpoint (test_tiny, task multilabel, thresholds 0.5, 0.4, 0.6) fitted to `multilabel_csv`
    by a plain loop of binary cross-entropy, independent of imgclf's trainer: what the stages after training
    (evaluate, predict, serve, export) test with. Its config names the manifest as its data."""
    import torch

    from imgclf.data.sources import open_source
    from imgclf.models.checkpoint import make_checkpoint, save_checkpoint
    from imgclf.models.registry import build_model

    src = open_source(str(multilabel_csv))
    tr = src.splits["train"]
    x = torch.stack([torch.tensor(np.array(Image.open(p).convert("RGB")), dtype=torch.float32) for p in tr.paths])
    x = (x.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    y = torch.as_tensor(tr.target_array())
    torch.manual_seed(0)
    model = build_model("test_tiny", len(src.classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
    model.eval()
    pre = {"img_size": 16, "resize": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    config = {"data": str(multilabel_csv), "seed": 0, "val_fraction": 0.2, "task": "multilabel"}
    ck = make_checkpoint(
        model,
        model_name="test_tiny",
        classes=src.classes,
        preprocess=pre,
        config=config,
        task="multilabel",
        thresholds=[0.5, 0.4, 0.6],
    )
    path = tmp_path_factory.mktemp("mlckpt") / "multilabel.pt"
    save_checkpoint(ck, str(path))
    return str(path)


@pytest.fixture(scope="session")
def multilabel_onnx(multilabel_ckpt, tmp_path_factory) -> str:
    """`multilabel_ckpt` exported by the existing exporter (`--format onnx`): an ONNX file whose metadata holds the
    task and the thresholds (the serving tests: the PyTorch and the torch-free servers)."""
    from imgclf.exporting.export import export

    out = tmp_path_factory.mktemp("mlonnx") / "multilabel.onnx"
    export(multilabel_ckpt, "onnx", out=str(out), verify_images=8)
    return str(out)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """One tiny run (TINY_RUN) of 2 epochs through the Python API (`imgclf.train`); the run directory."""
    import imgclf

    out = tmp_path_factory.mktemp("runs")
    res = imgclf.train(**{**TINY_RUN, "data": str(tiny_data), "epochs": 2, "out": str(out)})
    return Path(res["run_dir"])


# the multi-label run's options besides TINY_RUN's: every tool that shapes its steps at once (the EMA, mixup and
# cutmix of multi-hot targets, per-label positive weights), so that one tiny run covers them
MULTILABEL_RUN = {"epochs": 2, "lr": 0.05, "ema": True, "ema_warmup": 0, "ema_decay": 0.9, "mixup": 0.4}
MULTILABEL_RUN |= {"cutmix": 1.0, "pos_weight": "auto"}


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory, multilabel_csv) -> Path:
    """One tiny multi-label run (TINY_RUN, MULTILABEL_RUN) on `multilabel_csv` through `imgclf.train`, its task
    inferred from the manifest; the run directory (best.pt and last.pt hold the task and fitted thresholds)."""
    import imgclf

    out = tmp_path_factory.mktemp("multilabel-runs")
    res = imgclf.train(**{**TINY_RUN, **MULTILABEL_RUN, "data": str(multilabel_csv), "out": str(out), "name": "ml"})
    return Path(res["run_dir"])


@pytest.fixture(scope="session")
def tiny_best(tiny_run) -> str:
    return str(tiny_run / "best.pt")


def metrics_rows(run_dir) -> list[dict]:
    """A run's metrics.csv, one dict per epoch (values as written)."""
    import csv
    import os

    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def train_tiny(tmp_path, data, name, **kw) -> dict:
    """`imgclf.train` of TINY_RUN at lr 0.05 into tmp_path/runs/NAME; `kw` wins."""
    import imgclf

    return imgclf.train(**{**TINY_RUN, "lr": 0.05, "data": data, "out": str(tmp_path / "runs"), "name": name, **kw})


def tiny_argv(**options) -> list[str]:
    """TINY_RUN with `options` as `imgclf train` (or `lr-find`) flags: keyword names, True for a bare flag."""
    argv = []
    for key, value in {**TINY_RUN, **options}.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


# ------------------------------------------------------------------------------------ every family, every format

# Every registry model family exports to every format (issue 22: onnx-int8 failed for every smallcnn checkpoint):
# one model of each family, the smallest member at the smallest input the family allows, with random weights. The
# cheap ones are exported in tests/unit/exporting/test_every_family.py, the others (seconds to minutes each) in
# tests/integration/test_export_families.py, by the same `export_cell`. name: (input px, the registry models it
# stands for (a name ending in ':' stands for every model of that prefix), where its cells run).
EXPORT_FAMILIES = {
    "test_tiny": (2, ("test_tiny",), "unit"),
    "smallcnn": (4, ("smallcnn",), "unit"),
    "airnet_small": (25, ("airnet", "airnet_small"), "integration"),  # 25: airnet's smallest input
    "efficientnet_lite0": (32, ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"), "integration"),
    "resnet18": (32, ("resnet18", "resnet50"), "integration"),
    "efficientnet_b0": (32, ("efficientnet_b0",), "integration"),
    "vgg16": (32, ("vgg16",), "integration"),
    # timm (optional): its own tiny test models, a ResNet, a ConvNeXt (LayerNorm, GELU) and a ViT (attention; its
    # position embeddings fix the input at 160 px)
    "timm:test_resnet": (32, ("timm:",), "integration"),
    "timm:test_convnext": (32, ("timm:",), "integration"),
    "timm:test_vit": (160, ("timm:",), "integration"),
}


def export_families(where: str) -> list[str]:
    """The EXPORT_FAMILIES whose cells run in `where` ("unit" or "integration")."""
    return [name for name, (_, _, at) in EXPORT_FAMILIES.items() if at == where]


def random_checkpoint(folder: Path, name: str) -> str:
    """A checkpoint of registry model `name` with random weights (seeded) at its EXPORT_FAMILIES input size, which
    records as its data a folder of 3 classes (4 training and 4 validation images each) written beside it."""
    import torch

    from imgclf.models.checkpoint import make_checkpoint, save_checkpoint
    from imgclf.models.registry import build_model, get_spec

    size = EXPORT_FAMILIES[name][0]
    data = make_image_folder(folder / "data", classes=("a", "b", "c"), n=4, n_val=4, size=size)
    pre = {**get_spec(name).preprocess(), "img_size": size, "resize": size}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(name, 3).eval()
    ckpt = make_checkpoint(model, model_name=name, classes=["a", "b", "c"], preprocess=pre, config={"data": str(data)})
    path = folder / "random.pt"
    save_checkpoint(ckpt, str(path))
    return str(path)


@pytest.fixture(scope="module")
def family_checkpoint(tmp_path_factory):
    """`family_checkpoint(name)`: `random_checkpoint` of EXPORT_FAMILIES' `name`, made once per test module."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = random_checkpoint(tmp_path_factory.mktemp(name.replace(":", "_")), name)
        return made[name]

    return get


def export_cell(capsys, weights: str, fmt: str, out: Path) -> dict:
    """`imgclf export WEIGHTS --format FMT` (few calibration images) must exit 0 with its file verified against
    the checkpoint, as every export is (verified on all 12 validation images); its report."""
    import json

    from imgclf.cli.main import main

    argv = ["export", weights, "--format", fmt, "--out", str(out), "--calib-images", "8", "--json", "-q"]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, f"exit {rc}: {captured.err}"
    report = json.loads(captured.out)
    assert report["format"] == fmt and report["verification"]["ok"] and report["verification"]["images"] == 12, report
    assert out.is_file() and report["size_bytes"] == out.stat().st_size
    return report


# ------------------------------------------------------------------------------------------ headless Chromium

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)",
)


@contextlib.contextmanager
def chromium_page(viewport: dict | None = None):
    """A page of a headless Chromium (the system's, driven by playwright) with a profile of its own, removed
    afterwards; no network of its own (no updates, sync or QUIC). Skips the test without playwright."""
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    profile = tempfile.mkdtemp(prefix="imgclf-chromium-")
    try:
        with playwright.sync_playwright() as p:
            # bypass_csp: the pages' Content-Security-Policy forbids eval, which playwright's evaluate and waits use
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=args, headless=True, bypass_csp=True
            )
            try:
                page = ctx.new_page()
                page.set_default_timeout(60_000)
                if viewport:
                    page.set_viewport_size(viewport)
                yield page
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def with_ood(weights: str, bank_images, val_images, out, accept: float = 0.95) -> str:
    """`weights` (a checkpoint) saved to `out` with an out-of-distribution entry (issue 25) made as training makes
    it, on given images: the bank is `bank_images`' normalised features (Runner.features), the record's thresholds
    are fitted (core/ood.fit_record) on `val_images`' scores (Runner.ood_scores) for `accept`. Returns `out`."""
    import torch

    from imgclf.core import ood
    from imgclf.infer.predict import Predictor
    from imgclf.infer.runtime import open_model
    from imgclf.models.checkpoint import load_checkpoint, save_checkpoint

    p = Predictor(str(weights), device="cpu")

    def batch(paths):
        return torch.stack([p.transform(p.load_uint8(str(x))) for x in paths])

    bank = p.runner.features(batch(bank_images)).half()
    k = ood.neighbours_for(len(bank))
    ckpt = load_checkpoint(str(weights))
    # the bank first (with a record that only says k), then the thresholds fitted on the scores it gives
    ckpt["ood"] = {"record": ood.fit_record({"msp": [0.0]}, accept=accept, temperature=None, k=k), "bank": bank}
    save_checkpoint(ckpt, str(out))
    runner = open_model(str(out), device="cpu")
    _, val = runner.ood_scores(batch(val_images))
    record = ood.fit_record(val, accept=accept, temperature=runner.temperature, bank_size=len(bank), k=k)
    ckpt["ood"] = {"record": record, "bank": bank}
    save_checkpoint(ckpt, str(out))
    return str(out)


def without_ood(weights: str, out) -> str:
    """`weights` saved to `out` without its out-of-distribution entry: a checkpoint from before training fitted
    one (imgclf 0.1), which `--reject ood` refuses. Returns `out`."""
    from imgclf.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(str(weights))
    ckpt.pop("ood", None)
    save_checkpoint(ckpt, str(out))
    return str(out)


def noise_images(folder: Path, n: int, seed: int, size: int = 16) -> list[str]:
    """`n` PNGs of uniform noise in `folder` (nothing like the tiny data's flat colours): out-of-distribution
    images for issue 25's tests. Returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = Path(folder) / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def process_gone(pid: int, wait: float = 0.0) -> bool:
    """Whether process `pid` has ended (no such process, or a zombie its parent has not reaped yet), waiting up to
    `wait` seconds for it (Linux /proc)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1].startswith("Z"):
                    return True
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
