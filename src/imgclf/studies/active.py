"""Active learning: which unlabelled images to label next (`select`), and the loop simulated on labelled data
(`simulate`), to see whether a strategy beats labelling at random.

Strategies (each ranks the pool by the model's predicted probabilities p, most useful to label first):
- entropy: highest entropy -sum p log p first (uncertainty sampling with Shannon's entropy; Settles 2009,
  "Active Learning Literature Survey", section 3.1).
- margin: smallest gap between the two most probable classes first (Scheffer, Decomain and Wrobel 2001).
- least-confidence: lowest top probability first (Lewis and Gale 1994; Culotta and McCallum 2005).
- random: a seeded uniform draw, the baseline every study compares with.
- diverse: uncertainty spread over the feature space, after Zhdanov 2019, "Diverse mini-batch Active
  Learning": the DIVERSE_PREFILTER x N most uncertain images (by margin) are clustered into N groups by k-means on
  the model's penultimate features, weighted by their uncertainty, and the image nearest each centre is picked,
  so that a batch is not N near-copies of one confusing scene.

The features are the input of the model's head (the classifier layer its registry entry names), the same
pre-head features the frozen-feature cache trains on; only a checkpoint exposes them (an exported graph gives
logits alone), so `diverse` needs a checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from imgclf.core.errors import CheckpointError, DataError, UsageError
from imgclf.core.fileio import atomic_open

log = logging.getLogger(__name__)

STRATEGIES = ("entropy", "margin", "least-confidence", "random", "diverse")
# Candidates per pick for `diverse` (Zhdanov's beta): enough to choose among, few enough that every pick stays
# among the uncertain images.
DIVERSE_PREFILTER = 10
# What the score column of selected.csv holds for each strategy, and in which order the rows come.
SCORE_MEANING = {
    "entropy": "entropy of the predicted probabilities (nats), highest first",
    "margin": "margin p1 - p2 between the two most probable classes, smallest first",
    "least-confidence": "1 - p1 (one less the top probability), highest first",
    "random": "entropy (nats), for comparison only: the order is a seeded random draw",
    "diverse": "margin p1 - p2 of each pick (one per k-means cluster of the uncertain images), smallest first",
}


# --------------------------------------------------------------------------------------------- scores and ranking


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(1)


def margin(probs: np.ndarray) -> np.ndarray:
    """p1 - p2: the top probability less the second (1 class: p1)."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return p[:, -1] - (p[:, -2] if p.shape[1] > 1 else 0.0)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs, dtype=np.float64).max(1)


def scores(probs: np.ndarray, strategy: str) -> np.ndarray:
    """The strategy's own measure of each image (see SCORE_MEANING)."""
    if strategy in ("entropy", "random"):
        return entropy(probs)
    if strategy in ("margin", "diverse"):
        return margin(probs)
    if strategy == "least-confidence":
        return least_confidence(probs)
    raise UsageError(f"unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")


def rank(
    probs: np.ndarray, strategy: str, budget: int, *, features: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Indices of the `budget` images to label next (all of them when there are fewer), in the order asked."""
    probs = np.asarray(probs)
    k = min(int(budget), len(probs))
    if strategy == "random":
        return np.random.default_rng(seed).permutation(len(probs))[:k]
    if strategy == "diverse":
        if features is None:
            raise UsageError("--strategy diverse needs the model's features: pass a checkpoint")
        return diverse(np.asarray(features), probs, k, seed=seed)
    s = scores(probs, strategy)
    return np.argsort(s if strategy == "margin" else -s, kind="stable")[:k]


def diverse(
    features: np.ndarray, probs: np.ndarray, k: int, *, seed: int = 0, prefilter: int = DIVERSE_PREFILTER
) -> np.ndarray:
    """Zhdanov 2019: k picks, one per cluster of the prefilter*k most uncertain images, smallest margin first."""
    m = margin(probs)
    by_margin = np.argsort(m, kind="stable")
    if k >= len(m):
        return by_margin
    cand = by_margin[: min(len(m), prefilter * k)]
    x = features[cand].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12  # cosine geometry: CNN features differ mostly in scale
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        # near-duplicates: fewer distinct points than clusters. Handled below (the picks are filled up).
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x, sample_weight=1.0 - m[cand] + 1e-6)
    dist = km.transform(x)  # len(cand) x k distances to the centres
    picked: list[int] = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            picked.append(int(members[np.argmin(dist[members, c])]))
    taken = set(picked)
    picked += [i for i in range(len(cand)) if i not in taken][: k - len(picked)]  # empty clusters: most uncertain
    chosen = cand[np.asarray(picked, dtype=int)]
    return chosen[np.argsort(m[chosen], kind="stable")]


# --------------------------------------------------------------------------------------------- pools and manifests


def _csv_paths(path: str, what: str) -> list[str]:
    """The `path` column of a CSV, relative paths taken relative to the CSV's folder."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in cols:
                raise DataError(
                    f"{what} '{path}' needs a header with a path column; it has: {', '.join(cols) or 'none'}"
                )
            reader.fieldnames = cols
            for row in reader:
                p = (row.get("path") or "").strip()
                if p:
                    out.append(os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {what} '{path}' ({e}): give a UTF-8 CSV with a path column") from None
    return out


def read_pool(pool: str) -> list[str]:
    """Absolute image paths of a pool: a folder (walked recursively) or a CSV with a path column."""
    from imgclf.infer.predict import expand_paths

    pool = str(pool)
    if not os.path.exists(pool):
        raise DataError(f"pool '{pool}' not found: pass a folder of images or a CSV with a path column")
    if os.path.isdir(pool):
        paths = [os.path.abspath(p) for p in expand_paths([pool])]
    elif pool.lower().endswith(".csv"):
        paths = _csv_paths(pool, "pool CSV")
        if not paths:
            raise DataError(f"pool CSV '{pool}' lists no paths: add rows with a path")
    else:
        raise DataError(f"pool '{pool}' is neither a folder nor a .csv file: pass a folder of images or a CSV")
    return list(dict.fromkeys(paths))  # a path listed twice is one image


def read_labelled(manifests) -> set[str]:
    """Real paths of already-labelled images: CSVs with a path column, or folders (class folders, any depth)."""
    from imgclf.data.sources import is_image_name

    done: set[str] = set()
    for m in manifests or ():
        m = str(m)
        if os.path.isdir(m):
            for dirpath, _, filenames in os.walk(m):
                done.update(os.path.realpath(os.path.join(dirpath, f)) for f in filenames if is_image_name(f))
        elif os.path.isfile(m):
            done.update(os.path.realpath(p) for p in _csv_paths(m, "--exclude manifest"))
        else:
            raise DataError(f"--exclude '{m}' not found: pass a CSV with a path column or a folder of labelled images")
    return done


# --------------------------------------------------------------------------------------------- scoring a pool


class HeadInputs:
    """`with HeadInputs(model, "fc") as h: model(x)` -> h.features(): the head's input for each image (N x D),
    the first call of the head in each forward (the plain view, where a model averages test-time views)."""

    def __init__(self, model, head: str):
        self.model, self.head = model, model.get_submodule(head)
        self.batches: list = []
        self._fresh = False

    def _start(self, module, args):
        self._fresh = True

    def _grab(self, module, args):
        if self._fresh:
            self.batches.append(args[0].detach().float().flatten(1).cpu())
            self._fresh = False

    def __enter__(self):
        self._hooks = [
            self.model.register_forward_pre_hook(self._start),
            self.head.register_forward_pre_hook(self._grab),
        ]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()

    def features(self) -> np.ndarray:
        import torch

        return torch.cat(self.batches).numpy() if self.batches else np.zeros((0, 0), dtype=np.float32)


def score_pool(predictor, paths: list[str], *, features: bool = False):
    """(probabilities N x C, features N x D or None, the readable paths, [(path, reason)] of the others), with
    `predictor`'s model and preprocessing, as `imgclf predict` would run them."""
    from imgclf.core.progress import progress
    from imgclf.models.registry import get_spec

    classes = {c: i for i, c in enumerate(predictor.classes)}
    grab = HeadInputs(predictor.runner.model, get_spec(predictor.runner.model_name).head) if features else None
    probs, ok, bad = [], [], []
    bs = predictor.batch_size
    with grab if grab is not None else contextlib.nullcontext():
        starts = range(0, len(paths), bs)
        for start in progress(starts, total=len(starts), desc="scoring pool", unit="batch", log_every=20):
            for r in predictor.predict(paths[start : start + bs], top_k=len(classes)):
                if "error" in r:
                    bad.append((r["path"], r["error"]))
                    continue
                row = np.zeros(len(classes))
                for t in r["top_k"]:
                    row[classes[t["label"]]] = t["probability"]
                probs.append(row)
                ok.append(r["path"])
    feats = grab.features() if grab is not None else None
    if feats is not None and len(feats) != len(ok):  # one forward per batch of readable images, in order
        raise RuntimeError(f"features of {len(feats)} images for {len(ok)} predictions")
    return np.asarray(probs).reshape(len(ok), len(classes)), feats, ok, bad


# --------------------------------------------------------------------------------------------- select


@dataclass
class Selection:
    strategy: str
    rows: list[dict]  # path, score, predicted_label, probability: in the order asked
    scored: int  # readable, unlabelled pool images scored
    excluded: int  # pool images left out as already labelled
    unreadable: list = field(default_factory=list)  # [(path, reason)]
    out: str = ""
    csv: str = ""
    sheet: str = ""


def select(
    weights: str,
    pool: str,
    *,
    budget: int,
    strategy: str = "entropy",
    exclude=(),
    out: str | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
) -> Selection:
    """Pick `budget` images of `pool` to label next; writes OUT/selected.csv and OUT/contact_sheet.png."""
    from imgclf.core.options import check_output_folder
    from imgclf.infer.predict import Predictor

    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
    if int(budget) < 1:
        raise UsageError(f"--budget must be at least 1, got {budget}")
    paths = read_pool(pool)
    labelled = read_labelled(exclude)
    todo = [p for p in paths if os.path.realpath(p) not in labelled]
    if not todo:
        raise DataError(f"every one of the {len(paths)} images of pool '{pool}' is already labelled (--exclude)")
    out = out or os.path.join(os.path.dirname(os.path.abspath(str(weights))), f"select-{strategy}")
    check_output_folder(out, "--out")
    pred = Predictor(weights, device=device, batch_size=batch_size, precision=precision)
    if strategy == "diverse" and pred.runner.format != "checkpoint":
        raise CheckpointError(
            f"--strategy diverse clusters the model's penultimate features, which a {pred.runner.format} file does "
            "not expose: pass the checkpoint it was exported from, or use entropy, margin or least-confidence"
        )
    probs, feats, ok, bad = score_pool(pred, todo, features=strategy == "diverse")
    for p, why in bad:
        log.warning("skipped %s: %s", p, why)
    if not ok:
        raise DataError(f"none of the {len(todo)} unlabelled pool images could be read (each is listed above)")
    order = rank(probs, strategy, budget, features=feats, seed=seed)
    s = scores(probs, strategy)
    rows = [
        {
            "path": ok[i],
            "score": float(s[i]),
            "predicted_label": pred.classes[int(probs[i].argmax())],
            "probability": float(probs[i].max()),
        }
        for i in order
    ]
    sel = Selection(strategy, rows, len(ok), len(paths) - len(todo), bad, out)
    _write_selection(sel, budget)
    return sel


def _write_selection(sel: Selection, budget: int) -> None:
    os.makedirs(sel.out, exist_ok=True)
    sel.csv = os.path.join(sel.out, "selected.csv")
    with atomic_open(sel.csv, newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "score", "predicted_label", "probability"])
        for r in sel.rows:
            w.writerow([r["path"], f"{r['score']:.6f}", r["predicted_label"], f"{r['probability']:.6f}"])
    if sel.unreadable:
        with atomic_open(os.path.join(sel.out, "unreadable.csv"), newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reason"])
            w.writerows(sel.unreadable)
    sel.sheet = os.path.join(sel.out, "contact_sheet.png")
    if len(sel.rows) < budget:
        log.warning(
            "the pool has only %d readable unlabelled images, fewer than --budget %d: all of them are selected",
            len(sel.rows),
            budget,
        )
    contact_sheet(sel.rows, sel.sheet, title=f"{len(sel.rows)} images to label next ({sel.strategy})")


def format_selection(sel: Selection) -> str:
    lines = [
        f"selected {len(sel.rows)} of {sel.scored} unlabelled pool images by {sel.strategy} "
        f"({sel.excluded} already labelled, {len(sel.unreadable)} unreadable and skipped)",
        f"score: {SCORE_MEANING[sel.strategy]}",
        f"wrote {sel.csv} and {sel.sheet}",
    ]
    return "\n".join(lines)


# Thumbnails on the sheet: the shorter side in pixels (1.6 inches at the plots' 110 dpi), 8 to a row, and at
# most SHEET_MAX of them (a sheet of thousands is unreadable; selected.csv lists every pick).
THUMB_PX = 176
SHEET_COLS = 8
SHEET_MAX = 200


def contact_sheet(rows: list[dict], path: str, *, title: str) -> None:
    """A PNG grid of the chosen images in the order asked, each with its rank, file name, predicted label,
    probability and score under it."""
    from imgclf.evaluation.plots import _save

    _save(sheet_figure(rows, title=title), path)


def sheet_figure(rows: list[dict], *, title: str):
    from imgclf.data.images import UnreadableImage, load_image
    from imgclf.evaluation.plots import _figure, label

    shown = rows[:SHEET_MAX]
    cols = max(1, min(SHEET_COLS, len(shown)))
    n_rows = max(1, -(-len(shown) // cols))
    fig = _figure(figsize=(2.0 * cols, 2.2 * n_rows + 0.4))
    axes = fig.subplots(n_rows, cols, squeeze=False)
    fig.subplots_adjust(hspace=0.45, wspace=0.12)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, r) in enumerate(zip(axes.flat, shown), start=1):
        try:
            im = np.asarray(load_image(r["path"], resize=THUMB_PX))
            ax.imshow(im, interpolation="nearest" if min(im.shape[:2]) < THUMB_PX else "antialiased")
        except UnreadableImage as e:  # changed since it was scored: say so in its cell
            ax.text(0.5, 0.5, f"unreadable\n{e}"[:60], ha="center", va="center", fontsize=7, transform=ax.transAxes)
        name = os.path.basename(r["path"])
        name = name if len(name) <= 22 else name[:9] + "..." + name[-10:]
        ax.text(
            0.5,
            -0.03,
            f"{i}. {label(name)}\n{label(r['predicted_label'])} {r['probability']:.2f}, score {r['score']:.3f}",
            ha="center",
            va="top",
            fontsize=7,
            transform=ax.transAxes,
        )
    more = f" (the first {SHEET_MAX} of {len(rows)}: selected.csv lists them all)" if len(rows) > SHEET_MAX else ""
    fig.suptitle(label(title) + more, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------- the simulation


@dataclass
class SimResult:
    rows: list[dict]  # strategy, seed, round, labels, accuracy
    summary: list[dict]  # strategy, round, labels, mean, std, min, max, seeds
    versus_random: list[dict]  # strategy, rounds, mean_diff, wins, pairs
    setup: dict
    csv: str = ""
    summary_csv: str = ""
    plot: str = ""


def simulate(
    data: str,
    *,
    strategies=("entropy", "margin", "diverse", "random"),
    start: int = 20,
    budget: int = 20,
    rounds: int = 5,
    seeds: int = 3,
    features: str = "efficientnet_lite0",
    img_size: int | None = None,
    pool_size: int | None = None,
    eval_size: int | None = None,
    eval_split: str | None = None,
    start_mode: str = "stratified",
    out: str = os.path.join("runs", "active-sim"),
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 64,
    data_root: str | None = None,
) -> SimResult:
    """The active-learning loop on labelled data: from `start` labels of the train split, each round fit a
    logistic regression on frozen features of the labelled images, pick `budget` more by a strategy, reveal
    their labels; accuracy on the eval split each round, for each strategy and `seeds` seeds. The features
    (computed once: a pretrained registry model, or a checkpoint's penultimate layer) are cached in OUT."""
    from imgclf.core.options import check_output_folder
    from imgclf.data.sources import open_source

    strategies = _check_sim_args(strategies, start, budget, rounds, seeds, start_mode)
    FeatureModel.check(features)
    src = open_source(data, data_root=data_root, seed=seed)
    eval_split = eval_split or ("test" if "test" in src.splits else "val")
    if eval_split == "train":
        raise UsageError("--eval-split train is the pool the simulation labels: measure on val or test")
    pool = _subset(src.split("train"), pool_size, seed, "--pool-size")
    ev = _subset(src.split(eval_split), eval_size, seed, "--eval-size")
    _check_sizes(len(pool), len(src.classes), start=start, budget=budget, rounds=rounds, start_mode=start_mode)
    check_output_folder(out, "--out")
    extractor = FeatureModel.open(features, len(src.classes), img_size=img_size, device=device)
    os.makedirs(out, exist_ok=True)
    x, y, xe, ye = cached_features(extractor, pool, ev, out, batch_size=batch_size)
    setup = {
        "data": src.location,
        "features": extractor.label,
        "preprocess": extractor.prep.to_dict(),
        "pool": len(y),
        "eval_split": eval_split,
        "eval": len(ye),
        "classes": len(src.classes),
        **dict(start=start, start_mode=start_mode, budget=budget, rounds=rounds, seeds=seeds, seed=seed),
        "classifier": "scikit-learn LogisticRegression (lbfgs, C=1) on standardised features",
    }
    rows = _run_all(x, y, xe, ye, strategies, setup)
    return _finish(rows, setup, out)


def _check_sim_args(strategies, start, budget, rounds, seeds, start_mode) -> list[str]:
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise UsageError(
            f"--strategies: unknown '{unknown[0] if unknown else ''}': a comma-separated list of {', '.join(STRATEGIES)}"
        )
    for flag, v in (("--start", start), ("--budget", budget), ("--rounds", rounds), ("--seeds", seeds)):
        if int(v) < 1:
            raise UsageError(f"{flag} must be at least 1, got {v}")
    if start_mode not in ("stratified", "random"):
        raise UsageError(f"--start-mode must be stratified or random, not '{start_mode}'")
    return list(dict.fromkeys(strategies))


def _check_sizes(pool: int, classes: int, *, start: int, budget: int, rounds: int, start_mode: str) -> None:
    need = start + rounds * budget
    if need > pool:
        raise UsageError(
            f"--start {start} + --rounds {rounds} x --budget {budget} = {need} labels, but the pool (train split) "
            f"has {pool} images: lower them or raise --pool-size"
        )
    if start_mode == "stratified" and start < classes:
        raise UsageError(
            f"--start {start} cannot hold one image of each of the {classes} classes: raise it, or use "
            "--start-mode random"
        )


def _subset(split, n: int | None, seed: int, flag: str):
    """A seeded random subset of `n` images (the same for every seed of the simulation), in the split's order."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise UsageError(f"{flag} must be at least 1, got {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=n, replace=False))
    return split.subset(keep.tolist())


@dataclass
class FeatureModel:
    """A frozen backbone: a pretrained registry model, or an imgclf checkpoint (its own preprocessing)."""

    model: object
    name: str
    prep: object
    label: str  # what it is, for the record
    identity: str  # what the cached features depend on
    device: object

    @staticmethod
    def check(what: str):
        """The registry entry of a model name (None for a checkpoint file); one line when it cannot give
        pretrained features."""
        from imgclf.models.registry import get_spec

        if os.path.isfile(what):
            return None
        if what.endswith((".pt", ".pth")) or os.sep in what:
            raise CheckpointError(
                f"--features '{what}' not found: pass a checkpoint file or a model name (imgclf models)"
            )
        spec = get_spec(what)  # unknown: one line with "did you mean"
        if spec.weights is None and spec.pretrained_builder is None:
            raise UsageError(
                f"{what} has no pretrained weights: --features needs a pretrained model (imgclf models) or a checkpoint"
            )
        return spec

    @classmethod
    def open(cls, what: str, num_classes: int, *, img_size: int | None, device: str) -> FeatureModel:
        from imgclf.compute.device import resolve_device, to_layout
        from imgclf.core.artifact import Preprocess
        from imgclf.data.pipeline import resolve_preprocess
        from imgclf.models.registry import build_model

        dev = resolve_device(device)
        if os.path.isfile(what):
            from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint

            if img_size is not None:
                raise UsageError(
                    "--img-size is for a registry model: a checkpoint's features use its own preprocessing"
                )
            ckpt = load_checkpoint(what)
            st = os.stat(what)
            ident = f"{os.path.abspath(what)}\0{st.st_size}\0{st.st_mtime_ns}"
            model = model_from_checkpoint(ckpt, dev, path=what)
            prep = Preprocess.from_dict(ckpt["preprocess"])
            return cls(model, ckpt["model"]["name"], prep, f"checkpoint {what}", ident, dev)
        spec = cls.check(what)
        prep = resolve_preprocess(spec, img_size=img_size, pretrained=True, own_size=None)
        model = to_layout(build_model(what, num_classes, pretrained=True).to(dev), True).eval()
        return cls(model, what, prep, f"{what} (pretrained, frozen)", f"{what}\0pretrained", dev)


def cached_features(fm: FeatureModel, pool, ev, out: str, *, batch_size: int):
    """(pool features, pool labels, eval features, eval labels) as numpy arrays, from OUT/features.pt when it
    was made by the same model and preprocessing from the same files, else computed (and saved there)."""
    import torch

    from imgclf.data.sources import hash_split

    h = hashlib.sha1(f"{fm.identity}\0{json.dumps(fm.prep.to_dict(), sort_keys=True)}".encode())
    hash_split(h, pool)
    hash_split(h, ev)
    key, path = h.hexdigest(), os.path.join(out, "features.pt")
    if os.path.isfile(path):
        with contextlib.suppress(Exception):  # unreadable or another run's: computed afresh below
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("key") == key:
                log.info("features from %s (same model, preprocessing and files)", path)
                return d["x"].numpy(), d["y"].numpy(), d["xe"].numpy(), d["ye"].numpy()
    x, y = _split_features(fm, pool, batch_size, "features pool")
    xe, ye = _split_features(fm, ev, batch_size, "features eval")
    blob = {"key": key, "x": torch.from_numpy(x), "y": torch.from_numpy(y)}
    blob.update(xe=torch.from_numpy(xe), ye=torch.from_numpy(ye))
    with atomic_open(path, "wb") as f:
        torch.save(blob, f)
    return x, y, xe, ye


# images decoded and held at once while extracting features: 1,000 at 256 px are 197 MB of uint8
FEATURE_CHUNK = 1000


def _split_features(fm: FeatureModel, split, batch_size: int, desc: str):
    """Pre-head features (N x D float32) and labels of the split's readable images; unreadable ones are listed
    and left out."""
    from imgclf.data.feed import make_feed
    from imgclf.data.pipeline import default_workers
    from imgclf.training.features import extract

    log.info(
        "%s: %d images through %s at %d px (once; cached in features.pt)", desc, len(split), fm.name, fm.prep.img_size
    )
    xs, ys = [], []
    for lo in range(0, len(split), FEATURE_CHUNK):
        part = split.subset(range(lo, min(lo + FEATURE_CHUNK, len(split))))
        feed, bad = make_feed(
            part, fm.prep, cache="memory", workers=default_workers(), eval_batch_size=batch_size, desc=f"decode {desc}"
        )
        for p, why in bad:
            log.warning("left out %s: %s", p, why)
        if len(feed):
            xs.append(extract(fm.model, fm.name, feed.batches(), fm.device, None, desc=desc).numpy())
            ys.append(feed.labels.numpy())
    if not xs:
        raise DataError(f"none of the {len(split)} images of split '{split.name}' could be read")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def start_set(y: np.ndarray, k: int, seed: int, mode: str) -> np.ndarray:
    """The first `k` labelled images: a seeded draw, stratified (every class, in proportion) or plain."""
    if mode == "random":
        return np.sort(np.random.default_rng(seed).choice(len(y), size=k, replace=False))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    if k < np.count_nonzero(counts) or (counts[counts > 0] < 2).any():
        log.warning(
            "a stratified start of %d images is impossible here (a class of one image, or more classes): a plain draw",
            k,
        )
        return start_set(y, k, seed, "random")
    if k >= len(y):
        return np.arange(len(y))
    idx, _ = train_test_split(np.arange(len(y)), train_size=k, random_state=seed, stratify=y)
    return np.sort(idx)


def fit_predict(x: np.ndarray, y: np.ndarray, others: list[np.ndarray], n_classes: int) -> list[np.ndarray]:
    """A logistic regression fit on (x, y); its probabilities (N x n_classes) for each array of `others`.
    A class with no labelled image yet gets probability 0."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    if len(present) == 1:  # one class seen so far: nothing to fit, it is the only answer
        outs = []
        for o in others:
            p = np.zeros((len(o), n_classes))
            p[:, present[0]] = 1.0
            outs.append(p)
        return outs
    clf = LogisticRegression(max_iter=2000).fit(x, y)
    outs = []
    for o in others:
        p = np.zeros((len(o), n_classes))
        p[:, clf.classes_] = clf.predict_proba(o)
        outs.append(p)
    return outs


def run_strategy(x, y, xe, ye, labelled: np.ndarray, strategy: str, *, budget: int, rounds: int, seed: int):
    """One simulated loop: [(round, labels, accuracy)], round 0 being the start set. `x` is standardised."""
    n_classes = int(max(y.max(), ye.max())) + 1
    mask = np.zeros(len(y), dtype=bool)
    mask[labelled] = True
    out = []
    for r in range(rounds + 1):
        rest = np.flatnonzero(~mask)
        p_eval, p_rest = fit_predict(x[mask], y[mask], [xe, x[rest]], n_classes)
        out.append((r, int(mask.sum()), float((p_eval.argmax(1) == ye).mean())))
        if r == rounds:
            break
        mask[rest[rank(p_rest, strategy, budget, features=x[rest], seed=seed * 1009 + r)]] = True
    return out


def _run_all(x, y, xe, ye, strategies, setup) -> list[dict]:
    from sklearn.preprocessing import StandardScaler

    from imgclf.core.progress import progress

    # standardised with the statistics of the whole pool: unlabelled images are there to be used, labels are not
    scaler = StandardScaler().fit(x)
    x, xe = scaler.transform(x), scaler.transform(xe)
    rows = []
    runs = [(s, strat) for s in range(setup["seeds"]) for strat in strategies]
    for s, strat in progress(runs, total=len(runs), desc="simulating", unit="run", log_every=1):
        seed = setup["seed"] + s
        # the same start set for every strategy of a seed: their curves differ by their picks alone
        first = start_set(y, setup["start"], seed, setup["start_mode"])
        for r, labels, acc in run_strategy(
            x, y, xe, ye, first, strat, budget=setup["budget"], rounds=setup["rounds"], seed=seed
        ):
            rows.append({"strategy": strat, "seed": seed, "round": r, "labels": labels, "accuracy": acc})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per strategy and round: the mean, standard deviation, min and max accuracy over the seeds."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["round"], r["labels"]), []).append(r["accuracy"])
    return [
        {
            "strategy": k[0],
            "round": k[1],
            "labels": k[2],
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "seeds": len(v),
        }
        for k, v in groups.items()
    ]


def versus_random(rows: list[dict], *, after: int = 2) -> list[dict]:
    """Each strategy against random at equal labels, paired by seed and round, from round `after` on (the
    published finding is about the later rounds): the mean difference in accuracy and the pairs it won."""
    acc = {(r["strategy"], r["seed"], r["round"]): r["accuracy"] for r in rows}
    out = []
    for strat in dict.fromkeys(r["strategy"] for r in rows):
        if strat == "random":
            continue
        diffs = [
            a - acc[("random", s, rd)]
            for (st, s, rd), a in acc.items()
            if st == strat and rd >= after and ("random", s, rd) in acc
        ]
        if diffs:
            out.append(
                {
                    "strategy": strat,
                    "from_round": after,
                    "mean_diff": float(np.mean(diffs)),
                    "wins": int(sum(d > 0 for d in diffs)),
                    "ties": int(sum(d == 0 for d in diffs)),
                    "pairs": len(diffs),
                }
            )
    return out


def _finish(rows: list[dict], setup: dict, out: str) -> SimResult:
    res = SimResult(rows, summarise(rows), versus_random(rows, after=min(2, setup["rounds"])), setup)
    res.csv, res.summary_csv = os.path.join(out, "active_sim.csv"), os.path.join(out, "active_sim_summary.csv")
    _write_rows(rows, res.csv, ["strategy", "seed", "round", "labels", "accuracy"])
    _write_rows(res.summary, res.summary_csv, ["strategy", "round", "labels", "mean", "std", "min", "max", "seeds"])
    with atomic_open(os.path.join(out, "active_sim.json")) as f:
        json.dump({"setup": setup, "summary": res.summary, "versus_random": res.versus_random}, f, indent=2)
    res.plot = os.path.join(out, "active_sim.png")
    plot_learning_curves(res.summary, res.plot, title=_plot_title(setup))
    return res


def _write_rows(rows: list[dict], path: str, cols: list[str]) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})


def _plot_title(setup: dict) -> str:
    return (
        f"{os.path.basename(setup['data'].rstrip(os.sep))}: {setup['features']}, pool {setup['pool']}, "
        f"{setup['eval_split']} {setup['eval']} images; {setup['seeds']} seeds (mean, band: min-max)"
    )


def plot_learning_curves(summary: list[dict], path: str, *, title: str) -> None:
    """Accuracy against the number of labels: one curve per strategy (mean over seeds), its min-max band."""
    from imgclf.evaluation.plots import _figure, _save, label

    fig = _figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    # a style per strategy: curves that coincide (entropy and margin rank alike with two classes) stay visible
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", (0, (5, 1)))]
    for i, strat in enumerate(dict.fromkeys(r["strategy"] for r in summary)):
        pts = sorted((r for r in summary if r["strategy"] == strat), key=lambda r: r["labels"])
        xs = [r["labels"] for r in pts]
        marker, ls = styles[i % len(styles)]
        (line,) = ax.plot(
            xs,
            [r["mean"] for r in pts],
            marker=marker,
            linestyle=ls,
            markersize=4,
            fillstyle="none",
            label=label(strat),
        )
        ax.fill_between(xs, [r["min"] for r in pts], [r["max"] for r in pts], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("accuracy")
    ax.set_title(label(title), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def format_simulation(res: SimResult) -> str:
    """The summary as a table (mean +- std [min-max] per strategy at each number of labels) and the verdicts."""
    st = res.setup
    strategies = list(dict.fromkeys(r["strategy"] for r in res.summary))
    cell = {(r["strategy"], r["labels"]): r for r in res.summary}
    labels = sorted({r["labels"] for r in res.summary})
    lines = [
        f"{st['data']}: pool {st['pool']} images, {st['eval_split']} {st['eval']} images, features {st['features']}; "
        f"accuracy over {st['seeds']} seeds: mean +- std [min-max]",
        f"{'labels':>6}  " + "  ".join(f"{s:<27}" for s in strategies),
    ]
    for n in labels:
        cells = []
        for s in strategies:
            r = cell.get((s, n))
            cells.append(f"{r['mean']:.3f} +-{r['std']:.3f} [{r['min']:.3f}-{r['max']:.3f}]" if r else "-")
        lines.append(f"{n:>6}  " + "  ".join(f"{c:<27}" for c in cells))
    for v in res.versus_random:
        lines.append(
            f"{v['strategy']} vs random from round {v['from_round']} on, at equal labels: "
            f"{100 * v['mean_diff']:+.1f} points on average, ahead in {v['wins']} of {v['pairs']} "
            f"(seed, round) pairs" + (f", level in {v['ties']}" if v["ties"] else "")
        )
    lines.append(f"wrote {res.csv}, {res.summary_csv} and {res.plot}")
    return "\n".join(lines)
