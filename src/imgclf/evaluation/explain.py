"""Grad-CAM: where in an image a checkpoint finds its evidence for a class.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017, arXiv:1610.02391) weighs each channel k of the last convolutional feature map A (C x h x w) by the
spatial mean of the gradient of the class score y_c (the logit) with respect to it, alpha_k = mean_ij dy_c/dA_kij,
and keeps the positive part of the weighted sum, relu(sum_k alpha_k A_k): an h x w map (7 x 7 for a 224 px
ResNet or EfficientNet), upsampled to the input, then drawn back onto the original image through the same
resize and centre crop that `predict` applies.

Written here (forward hooks and one `torch.autograd.grad`) rather than taken from the `grad-cam` package
(pytorch-grad-cam): its 1.5.7 release requires opencv-python-headless (tens of MB of native code), ttach and
scipy, none of which imgclf otherwise needs, for what is a few dozen lines on top of torch, Pillow and matplotlib;
and the layer it hooks must be named per architecture, while `find_target` below finds it for any model.

    from imgclf.evaluation.explain import Explainer, explain, gradcam
    gradcam(model, batch, target=None)          # N x H x W maps in [0, 1] for a normalised batch
    Explainer("runs/x/best.pt").explain(["a.jpg"], targets=None)   # per image: label, map at the image's size
    explain("runs/x/best.pt", ["a.jpg", "photos/"], target="bee", out="cams/", sheet=True)   # writes PNGs
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from imgclf.compute.device import to_layout
from imgclf.core.errors import UsageError, did_you_mean
from imgclf.core.fileio import atomic_open, write_json
from imgclf.core.multilabel import MULTILABEL, label_set
from imgclf.core.options import check_output_folder
from imgclf.data.images import UnreadableImage, load_image, to_rgb
from imgclf.evaluation.plots import label, new_figure, save_figure
from imgclf.infer.predict import Predictor, walk_images

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- the target layer


class NoFeatureMap(UsageError):
    """The model has no channels-first convolutional feature map that Grad-CAM can use (a vision transformer)."""


@dataclass(frozen=True)
class Target:
    """The feature map Grad-CAM weighs: the `where` ("input" or "output") of call number `call` (0: the first) of
    module `module` in one forward pass. A module called more than once per pass (EfficientNet-Lite's shared
    `_swish` activation, say) is told apart by `call`; `calls` is how often it ran when the target was found."""

    module: str
    where: str
    call: int
    calls: int
    shape: tuple[int, int, int]  # C, h, w of the map for the input it was found with
    source: str | None = None  # the module that returned that map, where it is not `module` itself

    def describe(self) -> str:
        c, h, w = self.shape
        if self.where == "output":
            return f"the output of {self.module} ({c} x {h} x {w})"
        made = f", the output of {self.source}" if self.source else ""
        return f"the {c} x {h} x {w} map that {self.module} reads{made}"


@dataclass
class _Event:
    name: str
    module: nn.Module
    input: object
    output: object


def _is_map(t) -> bool:
    """A spatial feature map: N x C x h x w with more than one position."""
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1


def _is_head_shape(t) -> bool:
    """What the classifier after the last map returns: N x K, or N x K x 1 x 1 (a pooling that keeps dims)."""
    return isinstance(t, torch.Tensor) and (t.dim() <= 2 or (t.dim() == 4 and t.shape[2] * t.shape[3] == 1))


def _record(model: nn.Module, x: torch.Tensor) -> list[_Event]:
    """Every module call of one forward pass, in the order the calls return (a container after its children)."""
    events: list[_Event] = []
    handles = []
    for name, m in model.named_modules():
        if name:  # the model itself returns the logits: not a layer
            handles.append(
                m.register_forward_hook(
                    lambda mod, args, out, name=name: events.append(_Event(name, mod, args[0] if args else None, out))
                )
            )
    try:
        with torch.no_grad(), _single_view(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return events


def find_target(model: nn.Module, x: torch.Tensor, name: str = "the model") -> Target:
    """The last convolutional feature map of `model` on input `x` (N x 3 x H x W, normalised), found by one rule
    for every architecture:

    1. the map is the last tensor that a module returns as N x C x h x w with h * w > 1;
    2. after it, every module returns N x K or N x K x 1 x 1 (pooling, flatten, dropout, linear layers): a model
       whose last stage works on tokens (N x L x D, a vision transformer) has no such map and is refused;
    3. the first module after it must reduce it per channel (global pooling: C values per image; the pooled
       map, that module's input, is the target, taken after any activation applied outside a module), flatten
       it whole (C * h * w values), or read it already flattened (VGG's linear classifier: the map's own module
       is the target). A map that is pooled to another number of values is not channels-first (Swin's
       N x h x w x C) and is refused.

    Raises NoFeatureMap (a UsageError, exit 2) with the reason where no map qualifies."""
    events = _record(model, x)
    last = max((i for i, e in enumerate(events) if _is_map(e.output)), default=None)
    if last is None:
        raise NoFeatureMap(
            f"{name} has no convolutional feature map (no layer returns N x C x H x W): Grad-CAM needs one"
        )
    amap = events[last].output
    c, h, w = (int(s) for s in amap.shape[1:])
    after = events[last + 1 :]
    odd = next((e for e in after if not _is_head_shape(e.output)), None)
    if odd is not None:
        shape = list(odd.output.shape) if isinstance(odd.output, torch.Tensor) else type(odd.output).__name__
        raise NoFeatureMap(
            f"{name} has no convolutional feature map before its classifier: after its last 4-D tensor "
            f"({events[last].name}, {c} x {h} x {w}) comes {odd.name}, which returns {shape} (tokens, as in a vision "
            "transformer); Grad-CAM needs a channels-first map that the classifier pools"
        )
    if not after:  # the map is pooled and classified by functions alone: its own module is the target
        return _target(events, last, "output", (c, h, w))
    first = after[0]
    got = first.input
    per_image = int(first.output[0].numel()) if isinstance(first.output, torch.Tensor) else None
    if isinstance(got, torch.Tensor) and got.shape == amap.shape and per_image in (c, c * h * w):
        return _target(events, events.index(first), "input", (c, h, w), source=_maker(events[: last + 1], got))
    if isinstance(got, torch.Tensor) and got.dim() == 2 and got.shape[1] == c * h * w:
        return _target(events, last, "output", (c, h, w))
    raise NoFeatureMap(
        f"{name}'s last feature map ({events[last].name}, {list(amap.shape[1:])}) is not read as a channels-first "
        f"map: {first.name} turns it into {per_image} values per image, neither one per channel nor all of them"
    )


def _target(events: list[_Event], i: int, where: str, shape, source: str | None = None) -> Target:
    m = events[i].module
    calls = [j for j, e in enumerate(events) if e.module is m]
    return Target(events[i].name, where, calls.index(i), len(calls), shape, source)


def _maker(events: list[_Event], t: torch.Tensor) -> str | None:
    """The outermost module that returned `t` itself (a container returns its last child's tensor)."""
    return next((e.name for e in reversed(events) if e.output is t), None)


@contextlib.contextmanager
def _single_view(model: nn.Module):
    """The model as `predict` runs it, with one view, and as it was afterwards: eval mode (BatchNorm's running
    statistics, which a forward pass in training mode would move, and no dropout), and a model with test-time
    augmentation built into its eval forward (airnet's `tta`: six views, flipped and shifted) runs its plain view
    only, so that the map is of the image as given, not a sum over moved copies."""
    modes = [(m, m.training) for m in model.modules()]
    tta = getattr(model, "tta", None)
    model.eval()
    if isinstance(tta, bool):
        model.tta = False
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        if isinstance(tta, bool):
            model.tta = tta


# --------------------------------------------------------------------------------------------- Grad-CAM


def _targets(target, logits: torch.Tensor) -> torch.Tensor:
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    idx = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if len(idx) == 1:
        idx = idx.expand(n)
    if len(idx) != n:
        raise ValueError(f"target: one class index, or one per image ({n}), got {len(idx)}")
    if int(idx.min()) < 0 or int(idx.max()) >= k:
        raise ValueError(f"target: class indices are 0 to {k - 1}, got {idx.tolist()}")
    return idx


def gradcam_logits(
    model: nn.Module, batch: torch.Tensor, target=None, *, layer: Target | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps, logits, targets) for `batch` (N x 3 x H x W, normalised as the model expects, on its device).

    maps: N x H x W float32 in [0, 1] on the batch's device, each divided by its own maximum (all zeros where no
    position has positive evidence for the class); logits: N x classes of the same forward pass; targets: the
    class index each map is for: `target` (an index, or one per image) or, when None, the highest logit.
    `layer`: the target found by `find_target` (found on the first image when None)."""
    layer = layer or find_target(model, batch[:1])
    module = model.get_submodule(layer.module)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda mod, args, out: seen.append(args[0] if layer.where == "input" else out)
    )
    try:
        with torch.enable_grad(), _single_view(model):
            x = batch.detach().requires_grad_(True)  # so that the map has a gradient even with frozen weights
            logits = model(x)
    finally:
        handle.remove()
    if len(seen) != layer.calls:
        raise RuntimeError(
            f"{layer.module} ran {len(seen)} times in this forward pass, {layer.calls} when it was found"
        )
    amap = seen[layer.call]
    idx = _targets(target, logits.detach())
    # each image's score depends on its own map only (eval mode), so one backward pass serves the whole batch
    (grad,) = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), amap)
    alpha = grad.float().mean((2, 3), keepdim=True)  # N x C x 1 x 1: the channel weights
    cam = F.relu((alpha * amap.detach().float()).sum(1, keepdim=True))  # N x 1 x h x w
    cam = F.interpolate(cam, size=tuple(batch.shape[-2:]), mode="bilinear", align_corners=False)
    peak = cam.amax((2, 3), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(cam))
    return cam[:, 0].clamp(0.0, 1.0), logits.detach().float(), idx


def gradcam(model: nn.Module, batch: torch.Tensor, target=None, *, layer: Target | None = None) -> torch.Tensor:
    """Grad-CAM maps, N x H x W in [0, 1], for a normalised batch; see `gradcam_logits`."""
    return gradcam_logits(model, batch, target, layer=layer)[0]


# --------------------------------------------------------------------------------------------- back onto the image


def crop_box(resized: tuple[int, int], size: int) -> tuple[int, int]:
    """(top, left) of the model's size x size centre crop in the resized image (height, width), as
    data.images.center_crop takes it; negative where that crop pads a side shorter than `size`."""

    def start(side: int) -> int:
        return int(round((side - size) / 2.0)) if side >= size else -((size - side) // 2)

    return start(resized[0]), start(resized[1])


def cam_on_image(
    cam: torch.Tensor, resized: tuple[int, int], image_size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A map over the model's input (S x S) as a map over the original image: (H x W float32 in [0, 1], the box
    (left, top, right, bottom) in image pixels that the model saw). `resized`: (height, width) of the image
    after the preprocessing's resize, before the crop; `image_size`: (width, height) of the original. Outside
    the box the map is 0: the model never saw those pixels. Scaled to its peak (1), or all 0 like the input's."""
    s = int(cam.shape[-1])
    hr, wr = resized
    top, left = crop_box(resized, s)
    canvas = torch.zeros(1, 1, hr, wr)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(hr, top + s), min(wr, left + s)
    canvas[0, 0, r0:r1, c0:c1] = cam.detach().float().cpu()[r0 - top : r1 - top, c0 - left : c1 - left]
    w, h = image_size
    full = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0.0, 1.0)
    sy, sx = h / hr, w / wr
    box = (round(c0 * sx), round(r0 * sy), round(c1 * sx), round(r1 * sy))
    seen = torch.zeros_like(full, dtype=torch.bool)
    seen[box[1] : box[3], box[0] : box[2]] = True
    full = full.where(seen, 0.0)  # the interpolation would bleed a pixel past the crop's edge
    peak = float(full.max())
    # resampling can miss the peak between two sample points (or average it away on an image smaller than the
    # resize): scaled to 1 again, so that every overlay spans the whole colormap as the map over the input does
    return (full / peak if peak > 0 else full).numpy(), box


def overlay(
    image: Image.Image,
    cam: np.ndarray,
    box: tuple[int, int, int, int] | None = None,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Image.Image:
    """`image` (RGB) with `cam` (H x W in [0, 1], the image's size) drawn over it in matplotlib colormap `cmap`
    at opacity `alpha`; outside `box` (what the model did not see) the image is darkened to half instead."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    # the registry of colormaps: a lookup, no pyplot and no global state; matplotlib is heavy (plots.py says why)
    from matplotlib import colormaps  # noqa: PLC0415 - heavy: only when an overlay is drawn

    heat = colormaps[cmap](np.asarray(cam, dtype=np.float32), bytes=True)[..., :3].astype(np.float32)  # H x W x 3
    out = rgb * 0.5
    left, top, right, bottom = box if box is not None else (0, 0, rgb.shape[1], rgb.shape[0])
    inside = (slice(top, bottom), slice(left, right))
    out[inside] = (1.0 - alpha) * rgb[inside] + alpha * heat[inside]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def fit(image: Image.Image, cam: np.ndarray, box, max_side: int | None):
    """(image, cam, box) scaled down together so that the image's longer side is at most `max_side` pixels: an
    overlay drawn at the size it is shown, not at a 12-megapixel photo's (whose colour layers alone take ~150 MB)."""
    small = shrink(image, max_side)
    if small.size == image.size:
        return image, cam, box
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    cam = F.interpolate(t, size=(small.height, small.width), mode="bilinear", align_corners=False)[0, 0].numpy()
    sx, sy = small.width / image.width, small.height / image.height
    box = None if box is None else (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
    return small, cam, box


def shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` scaled down (aspect kept) so that its longer side is at most `max_side` pixels."""
    if not max_side or max(image.size) <= max_side:
        return image
    s = max_side / max(image.size)
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BILINEAR)


# --------------------------------------------------------------------------------------------- a checkpoint's view


class Explainer:
    """Grad-CAM for a checkpoint, on images read exactly as `Predictor` reads them (its own loading, resize,
    crop and normalisation): `Explainer("runs/x/best.pt").explain(["a.jpg", pil_image], targets="bee")`.

    Exported files are refused (they give no gradients). The model is this object's own copy, run in fp32 (as
    `predict` runs checkpoints by default); calls are serialised by a lock, since the hook that reads the feature
    map sees every forward pass through its layer."""

    def __init__(self, weights: str, *, device: str = "auto", batch_size: int = 8):
        self.predictor = Predictor(weights, device=device, batch_size=batch_size, precision="fp32", workers=1)
        runner = self.predictor.runner
        if runner.format != "checkpoint":
            raise UsageError(
                f"explanations need the model's gradients, which an exported file ({runner.format}) does not give: "
                f"pass the checkpoint it was exported from (runs/NAME/best.pt)"
            )
        self.weights = weights
        self.runner = runner
        self.model = runner.model
        self.classes: list[str] = list(runner.classes)
        self.batch_size = max(1, int(batch_size))
        self.layer: Target | None = None
        self._lock = threading.Lock()

    def class_index(self, label: str) -> int:
        """The index of class `label`; an unknown label is a UsageError that lists the model's classes."""
        if label in self.classes:
            return self.classes.index(label)
        shown = ", ".join(self.classes[:30]) + (f", ... ({len(self.classes)} in all)" if len(self.classes) > 30 else "")
        raise UsageError(
            f"target '{label}' is not a class of this model{did_you_mean(label, self.classes)}; its classes: {shown}"
        )

    def find_layer(self, x: torch.Tensor) -> Target:
        """The target layer (found once, on the first image explained, then kept)."""
        if self.layer is None:
            self.layer = find_target(self.model, x, self.runner.model_name)
            log.info("Grad-CAM on %s: %s", self.runner.model_name, self.layer.describe())
        return self.layer

    def explain(self, items: Iterable, targets=None) -> list[dict]:
        """See `explain_iter`; all results in a list."""
        return list(self.explain_iter(items, targets))

    def explain_iter(self, items: Iterable, targets=None) -> Iterator[dict]:
        """One result per item (a path or a PIL image), in order, batch by batch:

        {"path", "label", "index", "probability" (the prediction, as `predict` gives it), "target", "target_index",
        "target_probability", "cam" (H x W float32 in [0, 1] over the original image), "box" (left, top, right,
        bottom: the part of the image the model saw), "image" (the original, RGB PIL)}, or {"path", "error"} for
        an item that cannot be read. `targets`: None (each image's predicted class), a label, or one label (or
        None) per item, as for a gallery of mistakes explained for their true or their predicted class. For a
        multi-label model "label" is the top-scoring label (the default target), "probability" its sigmoid and
        "labels" the image's label set at the model's thresholds; any label can be the target."""
        items = list(items)
        per_item = isinstance(targets, (list, tuple))
        if per_item and len(targets) != len(items):
            raise UsageError(f"targets: one label per image ({len(items)}), got {len(targets)}")
        wanted = list(targets) if per_item else [targets] * len(items)
        for t in {t for t in wanted if t is not None}:
            self.class_index(t)  # every label checked before any image is read
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            yield from self._batch(chunk, wanted[start : start + self.batch_size])

    def _read(self, item) -> dict:
        name = None if isinstance(item, Image.Image) else str(item)
        try:
            u8 = self.predictor.load_uint8(item)
            original = _original(item)
        except Exception as e:  # the reason, one line, as predict lists an unreadable file
            reason = str(e) if isinstance(e, UnreadableImage) else f"cannot be processed: {type(e).__name__}: {e}"
            return {"path": name, "error": reason.splitlines()[0] if reason else type(e).__name__}
        return {"path": name, "u8": u8, "image": original}

    def _batch(self, chunk: list, wanted: list) -> list[dict]:
        read = [self._read(item) for item in chunk]
        ok = [r for r in read if "u8" in r]
        if not ok:
            return read
        x = torch.stack([self.predictor.transform(r["u8"]) for r in ok])
        x = to_layout(x.to(self.runner.device), self.runner.channels_last)
        with self._lock:  # the hooks below would also see another thread's forward pass through the model
            # the prediction exactly as `predict` makes it (softmax, or a multi-label model's sigmoids: its
            # top-scoring label is the default target)
            probs = self.runner.probabilities(self.runner.logits(x))
            pred = probs.argmax(1)
            idx = [self.class_index(t) if t is not None else int(p) for t, p in zip(_ok(wanted, read), pred)]
            cams, _, _ = gradcam_logits(self.model, x, idx, layer=self.find_layer(x[:1]))
        for j, r in enumerate(ok):
            u8 = r.pop("u8")
            cam, box = cam_on_image(cams[j], tuple(u8.shape[-2:]), r["image"].size)
            r.update(
                label=self.classes[int(pred[j])],
                index=int(pred[j]),
                probability=float(probs[j, pred[j]]),
                target=self.classes[idx[j]],
                target_index=idx[j],
                target_probability=float(probs[j, idx[j]]),
                cam=cam,
                box=box,
            )
            if self.runner.task == MULTILABEL:  # the label set, as predict gives it
                r["labels"] = label_set(probs[j].tolist(), self.runner.thresholds, self.classes)
        return read

    def overlay_png(self, image, target: str | None = None, *, max_side: int | None = 1024) -> tuple[bytes, dict]:
        """(PNG bytes of the overlay, the result without its arrays) for one path or PIL image: what a web page
        shows. Raises UsageError for an unknown target label or an image that cannot be read."""
        (r,) = self.explain([image], target)
        if "error" in r:
            raise UsageError(f"cannot explain the image: {r['error']}")
        buf = io.BytesIO()
        overlay(*fit(r["image"], r["cam"], r["box"], max_side)).save(buf, format="PNG")
        return buf.getvalue(), _summary(r)


def _ok(wanted: list, read: list[dict]) -> list:
    return [t for t, r in zip(wanted, read) if "u8" in r]


def _original(item) -> Image.Image:
    """The whole image, upright (its EXIF orientation applied) and RGB, as the model's input was made from it."""
    return to_rgb(item) if isinstance(item, Image.Image) else load_image(str(item))


def _summary(r: dict) -> dict:
    """A result without its arrays and images: plain types, for JSON."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items() if k not in ("cam", "image")}


# --------------------------------------------------------------------------------------------- files in, PNGs out

SHEET_NAME = "gradcam_sheet.png"
SHEET_THUMB = 320  # pixels, the longer side of each image on the contact sheet


def _inputs(images) -> list:
    """PIL images as they are; folders walked (sorted, recursively) for image files; any other path kept as given,
    so that a missing or unreadable file becomes that file's error line, not the end of the command."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    out: list = []
    for item in images:
        if isinstance(item, Image.Image) or not os.path.isdir(item):
            out.append(item if isinstance(item, Image.Image) else str(item))
            continue
        found = list(walk_images(str(item)))
        if not found:
            raise UsageError(f"folder '{item}' holds no image files (.jpg, .png, ...)")
        out.extend(found)
    if not out:
        raise UsageError("nothing to explain: give image files or folders")
    return out


def _overlay_name(r: dict, i: int, taken: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(r["path"]))[0] if r.get("path") else f"image-{i:04d}"
    name, k = f"{stem}_gradcam.png", 2
    while name in taken:  # photos/a/1.jpg and photos/b/1.jpg: 1_gradcam.png, 1_gradcam-2.png
        name, k = f"{stem}_gradcam-{k}.png", k + 1
    taken.add(name)
    return name


def _save_png(image: Image.Image, path: str) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def explain(
    weights: str,
    images,
    *,
    target: str | None = None,
    out: str | None = None,
    device: str = "auto",
    sheet: bool = False,
    max_side: int | None = 1024,
    batch_size: int = 8,
    on_row=None,
) -> dict:
    """Grad-CAM overlays of `images` (paths, folders of images, PIL images) for a checkpoint: OUT/STEM_gradcam.png
    per image (the heat map over the original image, scaled down to `max_side` pixels on its longer side),
    OUT/explain.json (the rows below, the layer used) and, with `sheet`, OUT/gradcam_sheet.png (all of them on
    one page). `target`: explain every image for this class label instead of its predicted class (a multi-label
    model: instead of its top-scoring label). OUT defaults to explain/ next to the weights.

    An image that cannot be read is a row {"path", "error"} and the others are still explained. Returns
    {"out", "layer", "rows", "errors", "sheet"}; `on_row(row)` is called as each row is done."""
    if out:
        check_output_folder(out, "--out")
    items = _inputs(images)
    explainer = Explainer(weights, device=device, batch_size=batch_size)
    if target is not None:
        explainer.class_index(target)
    out = out or os.path.join(os.path.dirname(os.path.abspath(weights)), "explain")
    os.makedirs(out, exist_ok=True)
    rows, thumbs, taken = [], [], set()
    for i, r in enumerate(explainer.explain_iter(items, target)):
        if "error" not in r:
            picture = overlay(*fit(r["image"], r["cam"], r["box"], max_side))
            r["overlay"] = os.path.join(out, _overlay_name(r, i, taken))
            _save_png(picture, r["overlay"])
            if sheet:
                thumbs.append((shrink(picture, SHEET_THUMB), _summary(r)))
        row = _summary(r)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    layer = explainer.layer.describe() if explainer.layer else None
    sheet_path = os.path.join(out, SHEET_NAME) if sheet and thumbs else None
    if sheet_path:
        plot_sheet(thumbs, sheet_path)
    errors = sum("error" in r for r in rows)
    write_json(
        {
            "weights": os.path.abspath(weights),
            "model": explainer.runner.model_name,
            "layer": layer,
            "method": "Grad-CAM (Selvaraju et al., 2017)",
            "rows": rows,
        },
        os.path.join(out, "explain.json"),
    )
    return {"out": out, "layer": layer, "rows": rows, "errors": errors, "sheet": sheet_path}


def plot_sheet(thumbs: list[tuple[Image.Image, dict]], path: str) -> None:
    """The overlays on one page, each titled with its file, the prediction and, where it differs, the class the
    map is for."""
    cols = min(4, len(thumbs))
    rows = -(-len(thumbs) // cols)
    fig = new_figure(figsize=(3.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, r) in zip(axes.flat, thumbs):
        ax.imshow(np.asarray(img))
        title = f"{label(os.path.basename(r.get('path') or ''))}\npred {label(r['label'])} {r['probability']:.2f}"
        if r["target"] != r["label"]:
            title += f"\nmap for {label(r['target'])} ({r['target_probability']:.2f})"
        ax.set_title(title, fontsize=8)
    save_figure(fig, path)
