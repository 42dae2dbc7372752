"""Robustness of a trained model: accuracy under L-infinity attacks (FGSM, PGD) and under common corruptions (a
multi-label model: mAP and micro-F1 under the corruptions, robustness_multilabel.py; attacks refused).

Attacks work in pixel units: the image is the [0, 1] float image the model's preprocessing starts from (the
centre crop of the decoded uint8 image / 255), the attack changes that image by at most eps per pixel and channel
and keeps it in [0, 1], and the normalisation (x - mean) / std happens inside the model call, so eps means the
same for every model whatever its mean and std. The model runs in eval mode in fp32; a model with test-time
augmentation in its eval forward (airnet's flip-and-shift) is attacked through that same forward.

- FGSM (Goodfellow, Shlens and Szegedy, ICLR 2015): x + eps * sign(grad_x loss), clipped to [0, 1].
- FGSM with a random start (`fgsm_rs`, for adversarial training: Wong, Rice and Kolter, ICLR 2020): PGD's
  random start, then one step of 1.25 eps.
- PGD (Madry, Makelov, Schmidt, Tsipras and Vladu, ICLR 2018): a uniform random start in the eps-ball, then
  `steps` steps x <- P(x + alpha * sign(grad_x loss)), P the projection onto the eps-ball around the clean
  image and onto [0, 1]; alpha = 2.5 * eps / steps by default, a rule common in later work: the iterates can
  travel 2.5 eps, across the ball from any start (Madry et al.'s own CIFAR-10 setting, 7 steps of 2/255 at
  8/255, is 1.75 * eps / steps). One run, no restarts; the final iterate is scored.
The loss is the cross-entropy of the logits against the true label. Attacks need gradients, so they take
checkpoints only; the corruptions (corruptions.py) take every format `evaluate` reads.

eps 0 is the clean accuracy, from the same images and the same normalisation as `imgclf evaluate`.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.compute.device import to_layout
from imgclf.core.errors import DataError, UsageError, did_you_mean
from imgclf.core.escape import one_line
from imgclf.core.fileio import write_json
from imgclf.core.multilabel import MULTILABEL
from imgclf.core.options import check_output_folder, parse_eps
from imgclf.core.progress import progress
from imgclf.data.batches import BatchTransform
from imgclf.data.cache import load_decoded
from imgclf.data.images import center_crop
from imgclf.data.pipeline import default_workers
from imgclf.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from imgclf.evaluation.plots import new_figure, save_figure
from imgclf.evaluation.robustness_multilabel import (
    format_multilabel_table,
    measure_multilabel,
    plot_multilabel_robustness,
)
from imgclf.infer.logits import align_classes, open_model_data, to_model_order
from imgclf.infer.runtime import open_model
from imgclf.models.registry import REGISTRY

log = logging.getLogger(__name__)

ATTACKS = ("fgsm", "pgd")
DEFAULT_EPS = "1/255,2/255,4/255,8/255"
DEFAULT_STEPS = 10
PGD_STEP_FACTOR = 2.5  # alpha = 2.5 * eps / steps: the steps can cross the eps-ball from any start
CORRUPTION_SOURCE = (
    "Hendrycks and Dietterich, ICLR 2019 (CIFAR-10-C); parameters of make_cifar_c.py in "
    "https://github.com/hendrycks/robustness"
)


# --------------------------------------------------------------------------------------------- parsing settings


def parse_attacks(text: str) -> list[str]:
    names = [a.strip().lower() for a in str(text).split(",") if a.strip()]
    for a in names:
        if a not in ATTACKS:
            raise UsageError(f"unknown attack '{a}'{did_you_mean(a, ATTACKS)}: use {', '.join(ATTACKS)}")
    if not names:
        raise UsageError(f"--attack is empty: use {', '.join(ATTACKS)} or both, comma-separated")
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) not in SEVERITIES:
            raise UsageError(f"--severities '{part}': severities are whole numbers from 1 to 5, as in 1,3,5")
        out.append(int(part))
    if not out:
        raise UsageError("--severities is empty: give some of 1,2,3,4,5")
    return sorted(set(out))


def eps_label(eps: float) -> str:
    """8/255 for eps a whole number of grey levels, else the decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return "0" if round(k) == 0 else f"{round(k)}/255"
    return f"{eps:.4g}"


# --------------------------------------------------------------------------------------------- attacks


class PixelModel(torch.nn.Module):
    """model((x - mean) / std) for x: N x 3 x S x S float in [0, 1]. Normalised exactly as the evaluation
    batches are (data/batches.py: x255 * 1/(255 std) - mean/std in one multiply-add; x * 255 gives back the
    integer grey levels of x = u / 255 exactly in float32), so eps 0 feeds the model the very tensor
    `evaluate` does."""

    def __init__(self, model: torch.nn.Module, mean, std, *, channels_last: bool = True):
        super().__init__()
        self.model, self.channels_last = model, channels_last
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("a", 1.0 / (255.0 * std_t))
        self.register_buffer("b", -mean_t / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_layout(torch.addcmul(self.b, x * 255.0, self.a), self.channels_last))


def _input_grad(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(summed cross-entropy)/dx: a summed loss keeps each image's gradient its own (sign() ignores scale)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one step of eps along sign(grad), clipped to [0, 1]."""
    if eps == 0:
        return x.clone()
    return (x + eps * _input_grad(model, x, y).sign()).clamp_(0.0, 1.0).detach()


FGSM_RS_STEP_FACTOR = 1.25  # Wong, Rice and Kolter's alpha = 1.25 eps: larger steps overfit "catastrophically"


def fgsm_rs(
    model, x: torch.Tensor, y: torch.Tensor, eps: float, *, step_size: float | None = None, generator=None
) -> torch.Tensor:
    """FGSM from a random start (Wong, Rice and Kolter, ICLR 2020, "Fast is better than free"): a uniform start in
    the eps-ball, one step of alpha = 1.25 eps along sign(grad), projected back onto the ball and [0, 1]. The start
    is drawn on the CPU from `generator`, as `pgd`'s."""
    if eps == 0:
        return x.clone()
    alpha = FGSM_RS_STEP_FACTOR * eps if step_size is None else step_size
    return pgd(model, x, y, eps, steps=1, step_size=alpha, generator=generator)


N_FGSM_NOISE_FACTOR = 2.0  # de Jorge et al.'s k: noise from U(-2 eps, 2 eps), then one step of eps, no projection


def n_fgsm(
    model, x: torch.Tensor, y: torch.Tensor, eps: float, *, step_size: float | None = None, generator=None
) -> torch.Tensor:
    """N-FGSM (de Jorge et al., NeurIPS 2022, "Make Some Noise: Reliable and Efficient Single-Step Adversarial
    Training"): uniform noise in [-2 eps, 2 eps], then one step of alpha = eps along sign(grad), clipped to [0, 1]
    but not projected back onto the eps-ball (the training perturbation reaches 3 eps). In the authors'
    experiments the stronger noise and the missing projection kept single-step training from overfitting
    catastrophically; the cost is FGSM's. The noise is drawn on the CPU from `generator`, as `pgd`'s start."""
    if eps == 0:
        return x.clone()
    alpha = eps if step_size is None else step_size
    k = N_FGSM_NOISE_FACTOR * eps
    noisy = (x + torch.empty(x.shape, dtype=x.dtype).uniform_(-k, k, generator=generator).to(x.device)).clamp_(0, 1)
    return (noisy + alpha * _input_grad(model, noisy, y).sign()).clamp_(0.0, 1.0).detach()


def pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the loss (ascent), L-infinity ball of radius eps, random start.

    The random start is drawn on the CPU from `generator` (then moved to x's device), so it is the same on
    every device."""
    if eps == 0:
        return x.clone()
    alpha = PGD_STEP_FACTOR * eps / steps if step_size is None else step_size
    start = torch.empty(x.shape, dtype=x.dtype).uniform_(-eps, eps, generator=generator).to(x.device)
    lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    adv = torch.max(torch.min(x + start, hi), lo)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y).sign()
        adv = torch.max(torch.min(adv, hi), lo)
    return adv.detach()


def attack_views(model_name: str) -> int:
    """The views a model's eval forward averages (airnet's built-in test-time augmentation: 6), 1 for others."""
    try:
        return int(REGISTRY[model_name].eval_views)
    except (KeyError, AttributeError):
        return 1


def _seed_for(seed: int, *parts) -> int:
    return zlib.crc32(":".join(map(repr, (int(seed), *parts))).encode())


# --------------------------------------------------------------------------------------------- the measurement


@dataclass(frozen=True)
class Settings:
    """What `robustness` measures and how, checked before the model or the data is opened."""

    attacks: list[str]
    eps: list[float]  # pixel units
    steps: int
    step_size: float | None  # PGD's alpha; None: PGD_STEP_FACTOR * eps / steps
    corruptions: bool
    severities: list[int]
    limit: int | None
    seed: int
    batch_size: int

    @classmethod
    def checked(
        cls, *, attacks, eps, steps, step_size, corruptions, severities, limit, seed, batch_size, cache
    ) -> Settings:
        """The settings as `robustness` takes them, each checked: one UsageError line for the first bad one."""
        attacks = parse_attacks(attacks) if isinstance(attacks, str) else [a.lower() for a in attacks]
        if attacks:
            parse_attacks(",".join(attacks))  # unknown names are refused here, whatever form they came in
        eps = parse_eps(DEFAULT_EPS if eps is None else eps if isinstance(eps, str) else ",".join(map(repr, eps)))
        severities = parse_severities(severities if isinstance(severities, str) else ",".join(map(str, severities)))
        if not attacks and not corruptions:
            raise UsageError("nothing to measure: pass --attack fgsm,pgd and/or --corruptions")
        if int(steps) < 1:
            raise UsageError(f"--steps must be at least 1, got {steps}")
        if step_size is not None and not (0 < float(step_size) <= 1):
            raise UsageError(f"--step-size {step_size} is outside (0, 1]: it is in pixel units, as in 2/255")
        if limit is not None and int(limit) < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        if int(batch_size) < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        if cache not in ("auto", "disk", "memory"):
            raise UsageError(f"cache '{cache}': use auto, disk or memory")
        return cls(attacks, eps, steps, step_size, corruptions, severities, limit, seed, batch_size)

    def alpha(self, attack: str, eps: float) -> float:
        """The step of `attack` at `eps`: FGSM steps eps once."""
        if attack != "pgd":
            return eps
        return PGD_STEP_FACTOR * eps / self.steps if self.step_size is None else self.step_size


def robustness(
    weights: str,
    data: str | None = None,
    *,
    split: str | None = None,
    attacks=(),
    eps=None,
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    corruptions: bool = False,
    severities=SEVERITIES,
    limit: int | None = None,
    out: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    data_root: str | None = None,
    workers: int | None = None,
    cache: str = "auto",
    plots: bool = True,
) -> dict:
    """Accuracy of `weights` on `split` of `data` (default: the data it was trained on; the split: test where the
    data has one, else val) under `attacks`
    (fgsm, pgd) at each eps (pixel units; eps 0, the clean accuracy, is always included) and, with
    `corruptions`, under each common corruption at `severities`. `limit`: N images of the split (a seeded
    choice, the same for every run: limit_indices).

    Writes robustness.json and robustness.png into `out` (default: next to the weights, in robustness-SPLIT/)
    and returns what robustness.json holds, plus `out`."""
    s = Settings.checked(
        attacks=attacks,
        eps=eps,
        steps=steps,
        step_size=step_size,
        corruptions=corruptions,
        severities=severities,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        cache=cache,
    )
    runner = open_model(weights, device=device, precision="fp32")
    _check_model(runner, s)
    multi = runner.task == MULTILABEL
    images, labels, src, bad = _load_split(runner, data, split, limit, data_root, workers, cache)
    split = split or src.held_out_split()
    tag = split if runner.format == "checkpoint" else f"{split}-{runner.format}"
    out = out or os.path.join(os.path.dirname(os.path.abspath(weights)), f"robustness-{tag}")
    _make_folder(out)

    result = _describe(weights, runner, s, data=src.location, split=split, n=len(labels), bad=bad)
    if multi:  # mAP and micro-F1 in place of accuracy (robustness_multilabel.py)
        result.update(measure_multilabel(runner, images, labels, _eval_transform(runner), s, split))
    else:
        result.update(_measure(runner, images, labels, s, split))
    write_json(result, os.path.join(out, "robustness.json"))
    if plots:
        (plot_multilabel_robustness if multi else plot_robustness)(result, os.path.join(out, "robustness.png"))
    result["out"] = out
    return result


def _check_model(runner, s: Settings) -> None:
    """Attacks need a single-label checkpoint: its gradients, and one true class to raise the loss of."""
    if s.attacks and runner.task == MULTILABEL:
        raise UsageError(
            "--attack raises the cross-entropy of one true class, and a multi-label model has none: measure it "
            "with --corruptions only"
        )
    if s.attacks and runner.format != "checkpoint":
        raise UsageError(
            f"attacks need the model's gradients, which an exported file ({runner.format}) does not give: pass the "
            f"checkpoint it was exported from, or ask for --corruptions only"
        )


def _measure(runner, images, labels, s: Settings, split: str) -> dict:
    """The clean accuracy, then the accuracy under each attack (eps 0 first: the clean accuracy) and corruption."""
    r = {"clean_accuracy": _correct(runner, images, labels, s.batch_size, desc=f"clean {split}") / len(labels)}
    if s.attacks:
        r["attacks"] = _run_attacks(runner, images, labels, s)
        r["attacks"]["results"] = {
            a: [{"eps": 0.0, "eps_label": "0", "accuracy": r["clean_accuracy"]}] + rows
            for a, rows in r["attacks"]["results"].items()
        }
    if s.corruptions:
        r["corruptions"] = _run_corruptions(runner, images, labels, s)
    return r


def _describe(weights, runner, s: Settings, *, data, split, n, bad) -> dict:
    """What was measured, and how: the head of robustness.json."""
    return {
        "weights": os.path.abspath(weights),
        "format": runner.format,
        "model": runner.model_name,
        "data": data,
        "split": split,
        "num_images": n,
        "limit": s.limit,
        "seed": int(s.seed),
        "batch_size": int(s.batch_size),
        "preprocess": runner.preprocess.to_dict(),
        "device": str(runner.extra.get("device", "cpu")),
        "precision": "fp32" if runner.format == "checkpoint" else runner.extra.get("precision", "fp32"),
        "left_out": [{"path": p, "reason": r} for p, r in bad],
    }


def _make_folder(out: str) -> None:
    check_output_folder(out, "--out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out '{out}': cannot make the folder ({e.strerror}); choose another path") from None


def _load_split(runner, data, split, limit, data_root, workers, cache):
    """(uint8 N x 3 x S x S at the model's input size, labels in the model's class order (a multi-label split's
    N x C multi-hot targets), source, left out): decoded and centre-cropped exactly as `evaluate` does (the same
    decoded cache)."""
    src, s = open_model_data(runner.config, data, split, data_root)
    split = split or src.held_out_split()
    data = data or runner.config.get("data")
    mapping = torch.as_tensor(align_classes(src.classes, runner.classes, data), dtype=torch.long)
    if limit is not None and limit < len(s):
        s, cache = s.subset(limit_indices(len(s), limit)), "memory"  # a cache file per --limit would fill the disk
    prep = runner.preprocess
    d = load_decoded(
        s,
        prep.resize,
        cache="memory" if cache == "memory" else "disk",
        workers=max(1, default_workers() if workers is None else workers),
        desc=f"decode {split}",
        interpolation=prep.interpolation,
    )
    for path, reason in d.bad:
        log.warning("left out %s: %s", one_line(path), one_line(reason))
    if len(d.split) == 0:
        raise DataError(f"no readable image in the {split} split of {src.location}: each one's reason is listed above")
    if d.split.targets is not None:
        labels = to_model_order(torch.as_tensor(d.split.target_array()), mapping.tolist(), len(runner.classes))
    else:
        labels = mapping[torch.as_tensor(d.split.labels, dtype=torch.long)]
    return center_crop(d.images, prep.img_size), labels, src, d.bad


LIMIT_SEED = 0  # the --limit choice, fixed: a checkpoint and its exports are measured on the same images


def limit_indices(n: int, limit: int) -> list[int]:
    """`limit` of the split's `n` images, a seeded choice kept in split order. Not the first `limit`: a folder
    split is sorted by class, and CIFAR-10's first 1000 test images are all airplanes."""
    return sorted(np.random.default_rng(LIMIT_SEED).permutation(n)[:limit].tolist())


def _eval_transform(runner):
    p = runner.preprocess
    return BatchTransform(kind="eval", size=p.img_size, mean=p.mean, std=p.std, interpolation=p.interpolation)


def _correct(runner, images, labels, batch_size, *, desc: str, change=None) -> int:
    """Images `runner` labels right, normalised as evaluation batches are; `change(uint8 batch, start)`
    corrupts each batch first."""
    tf, right = _eval_transform(runner), 0
    n = len(labels)
    for start in progress(range(0, n, batch_size), total=-(-n // batch_size), desc=desc, unit="batch"):
        x = images[start : start + batch_size]
        if change is not None:
            x = change(x.contiguous(), start)
        pred = runner.logits(tf(x)).argmax(1)
        right += int((pred == labels[start : start + batch_size]).sum())
    return right


def _run_attacks(runner, images, labels, s: Settings) -> dict:
    views = attack_views(runner.model_name)
    p = runner.preprocess
    model = PixelModel(runner.model, p.mean, p.std, channels_last=runner.channels_last).to(runner.device).eval()
    for w in model.parameters():
        w.requires_grad_(False)  # gradients for the image only (this runner's own copy of the model)
    results = {}
    for attack in s.attacks:
        rows = []
        for e in (e for e in s.eps if e > 0):
            right = _attacked_correct(model, runner.device, images, labels, attack, e, s)
            row = {"eps": e, "eps_label": eps_label(e), "accuracy": right / len(labels)}
            if attack == "pgd":
                row.update(steps=int(s.steps), step_size=s.alpha(attack, e))
            rows.append(row)
        results[attack] = rows
    forward = "the model's eval-mode forward"
    if views > 1:
        forward += f", with its built-in test-time augmentation ({views} views); gradients flow through every view"
    return {
        "norm": "Linf",
        "units": "pixels of the [0, 1] image before normalisation",
        "loss": "cross-entropy against the true label",
        "forward": forward,
        "eval_views": views,
        "pgd": {
            "steps": int(s.steps),
            "step_size": "2.5 * eps / steps" if s.step_size is None else s.step_size,
            "random_start": "uniform in the eps-ball",
            "restarts": 0,
        },
        "results": results,
    }


def _attacked_correct(model, device, images, labels, attack: str, eps: float, s: Settings) -> int:
    gen = torch.Generator().manual_seed(_seed_for(s.seed, attack, eps))  # PGD's random starts
    right, n, bs = 0, len(labels), s.batch_size
    desc = f"{attack} eps {eps_label(eps)}"
    # an attacked batch takes minutes on a CPU: a line per batch where there is no bar
    batches = progress(range(0, n, bs), total=-(-n // bs), desc=desc, unit="batch", log_every=1)
    for start in batches:
        x = images[start : start + bs].float().div_(255.0).to(device)
        y = labels[start : start + bs].to(device)
        if attack == "fgsm":
            adv = fgsm(model, x, y, eps)
        else:
            adv = pgd(model, x, y, eps, steps=s.steps, step_size=s.alpha(attack, eps), generator=gen)
        with torch.no_grad():
            right += int((model(adv).argmax(1) == y).sum())
    return right


def _run_corruptions(runner, images, labels, s: Settings) -> dict:
    results = {}
    for name, c in CORRUPTIONS.items():
        acc = {}
        for sev in s.severities:

            def change(x, start, name=name, sev=sev):
                return corrupt(x, name, sev, seed=s.seed, indices=range(start, start + len(x)))

            right = _correct(runner, images, labels, s.batch_size, desc=f"{name} {sev}", change=change)
            acc[str(sev)] = right / len(labels)
        results[name] = {
            "parameter": c.what,
            "values": {str(v): c.params[v - 1] for v in s.severities},
            "accuracy": acc,
            "mean_accuracy": sum(acc.values()) / len(acc),
        }
    return {
        "source": CORRUPTION_SOURCE,
        "severities": list(s.severities),
        "applied_to": "the model's input image (after the resize and centre crop), stored as uint8, then normalised",
        "results": results,
        "mean_accuracy": sum(r["mean_accuracy"] for r in results.values()) / len(results),
    }


# --------------------------------------------------------------------------------------------- report and plot


def format_table(r: dict) -> str:
    if r.get("task") == MULTILABEL:
        return format_multilabel_table(r)
    lines = [
        f"{r['model']} ({r['format']}) on {r['split']}: {r['num_images']} images, clean accuracy {r['clean_accuracy']:.4f}"
    ]
    if "attacks" in r:
        res = r["attacks"]["results"]
        heads = ["eps " + row["eps_label"] for row in next(iter(res.values()))]
        w = [max(len(h), 6) + 2 for h in heads]
        lines.append(f"{'attack':<10}" + "".join(f"{h:>{k}}" for h, k in zip(heads, w)))
        for a, rows in res.items():
            name = f"pgd-{r['attacks']['pgd']['steps']}" if a == "pgd" else a
            lines.append(f"{name:<10}" + "".join(f"{row['accuracy']:>{k}.4f}" for row, k in zip(rows, w)))
    if "corruptions" in r:
        c = r["corruptions"]
        lines.append(f"{'corruption':<18}" + "".join(f"{'sev ' + str(s):>8}" for s in c["severities"]) + f"{'mean':>8}")
        for name, row in c["results"].items():
            cells = "".join(f"{row['accuracy'][str(s)]:>8.4f}" for s in c["severities"])
            lines.append(f"{name:<18}{cells}{row['mean_accuracy']:>8.4f}")
        lines.append(f"{'mean':<18}" + " " * (8 * len(c["severities"])) + f"{c['mean_accuracy']:>8.4f}")
    return "\n".join(lines)


def plot_robustness(r: dict, path: str) -> None:
    """Accuracy against eps (one line per attack), and accuracy by corruption and severity (a heatmap)."""
    panels = [k for k in ("attacks", "corruptions") if k in r]
    fig = new_figure(figsize=(6.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, kind in zip(axes, panels):
        (_plot_attacks if kind == "attacks" else _plot_corruptions)(ax, r)
    fig.suptitle(f"{r['model']} ({r['format']}), {r['split']}: {r['num_images']} images")
    save_figure(fig, path)


def _plot_attacks(ax, r: dict) -> None:
    for a, rows in r["attacks"]["results"].items():
        name = f"PGD-{r['attacks']['pgd']['steps']}" if a == "pgd" else a.upper()
        ax.plot([row["eps"] * 255 for row in rows], [row["accuracy"] for row in rows], "o-", label=name)
    ax.set_xlabel("eps (grey levels of 255, L-infinity)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()


def _plot_corruptions(ax, r: dict) -> None:
    c = r["corruptions"]
    names = list(c["results"])
    grid = [[c["results"][n]["accuracy"][str(s)] for s in c["severities"]] for n in names]
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(c["severities"])), [str(s) for s in c["severities"]])
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_xlabel("severity")
    ax.set_title(f"corruptions (clean {r['clean_accuracy']:.2f})")
    ax.figure.colorbar(im, ax=ax, label="accuracy")
