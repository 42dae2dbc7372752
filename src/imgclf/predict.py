"""Predictor: images or paths in, labelled probabilities out, with the checkpoint's own preprocessing."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from .data.images import UnreadableImage, load_image, pil_to_uint8, resize_shorter, to_rgb
from .data.pipeline import eval_transform
from .data.sources import is_image_name
from .errors import UsageError
from .runtime import open_model


def expand_paths(paths) -> list[str]:
    """Files as given; folders walked recursively for image files, in sorted order."""
    out = []
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames if is_image_name(f) and not f.startswith(".")]
            if not found:
                raise UsageError(f"folder '{p}' holds no image files ({', '.join(('.jpg', '.png', '...'))})")
            out += sorted(found)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise UsageError(f"'{p}' not found: pass image files or folders of images")
    return out


class Predictor:
    """`Predictor("runs/x/best.pt").predict(["a.jpg", "b.png"], top_k=3)`.

    Each result: {"path", "label", "index", "probability", "top_k": [{"label", "probability"}, ...]}, or
    {"path", "error"} for a file that cannot be read or processed (the others still get predictions)."""

    def __init__(
        self,
        weights: str,
        *,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        workers: int | None = None,
    ):
        self.runner = open_model(weights, device=device, precision=precision)
        self.classes: list[str] = list(self.runner.classes)
        self.preprocess = self.runner.preprocess
        self.transform = eval_transform(self.preprocess)
        self.batch_size = batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)

    def _load(self, item) -> torch.Tensor:
        if isinstance(item, Image.Image):
            return self.transform(
                pil_to_uint8(resize_shorter(to_rgb(item), self.preprocess.resize, self.preprocess.interpolation))
            )
        return self.transform(
            pil_to_uint8(
                load_image(str(item), resize=self.preprocess.resize, interpolation=self.preprocess.interpolation)
            )
        )

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.runner.logits(batch)

    def predict(self, inputs, *, top_k: int = 5) -> list[dict]:
        single = isinstance(inputs, (str, Path, Image.Image))
        items = [inputs] if single else list(inputs)
        if int(top_k) < 1:  # as the server's 422: a request for no labels is a mistake, not an empty answer
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        k = min(int(top_k), len(self.classes))  # more than the classes: clamp, not crash
        results: list[dict] = []
        with ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                loaded = list(pool.map(self._try_load, chunk))
                ok = [t for t in loaded if isinstance(t, torch.Tensor)]
                probs = self.logits(torch.stack(ok)).softmax(1) if ok else None
                j = 0
                for item, t in zip(chunk, loaded):
                    name = item if not isinstance(item, Image.Image) else None
                    if not isinstance(t, torch.Tensor):
                        results.append({"path": str(name) if name is not None else None, "error": t})
                        continue
                    p, idx = probs[j].topk(k)
                    j += 1
                    results.append(
                        {
                            "path": str(name) if name is not None else None,
                            "label": self.classes[int(idx[0])],
                            "index": int(idx[0]),
                            "probability": float(p[0]),
                            "top_k": [{"label": self.classes[int(i)], "probability": float(q)} for q, i in zip(p, idx)],
                        }
                    )
        return results[0] if single else results

    def _try_load(self, item):
        try:
            return self._load(item)
        except UnreadableImage as e:
            return str(e)
        except Exception as e:
            detail = str(e).splitlines()[0] if str(e) else ""
            return f"cannot be processed: {type(e).__name__}" + (f": {detail}" if detail else "")
