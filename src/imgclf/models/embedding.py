"""A model's penultimate features beside its logits, for any model family: what `imgclf embed` writes, what the
kNN out-of-distribution score compares, and the extra outputs of an ONNX export.

The features are the input of the model's head (its registry entry's `head`), read by a forward pre-hook, so the
network and its state dict are untouched. A model that runs its head more than once per forward pass (airnet's
built-in flip-and-shift views, `--tta` through `models/tta.wrap`) gives the mean of those inputs, as its logits
are the mean of the views'. Features are L2-normalised. With a bank (N x D normalised training features) the
module also gives each image's distance to its k-th nearest bank row (core/ood.py's `knn`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.models.registry import get_spec


class FeatureOutputs(nn.Module):
    """`net` (the model as a runner runs it: temperature and test-time augmentation included) returning a tuple:
    (logits, normalised features) or, with `bank`, (logits, features, k-th neighbour distance). `model` is the
    bare network whose head is tapped (the same object `net` runs). `bank_dtype`: the dtype the bank is held in
    (float16 stores a checkpoint's float16 bank as it is, cast to float32 in the forward pass)."""

    def __init__(
        self,
        net: nn.Module,
        model: nn.Module,
        model_name: str,
        bank: torch.Tensor | None = None,
        k=None,
        *,
        bank_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.net = net
        self.head_name = get_spec(model_name).head
        self._seen: list[torch.Tensor] | None = None
        self._hook = model.get_submodule(self.head_name).register_forward_pre_hook(self._record)
        if bank is not None:
            # held as `bank_dtype` (an ONNX export keeps the checkpoint's float16: half the file, the same numbers,
            # as the distances are computed in float32 either way)
            self.register_buffer("bank", bank.to(bank_dtype).contiguous(), persistent=False)
            self.k = int(min(int(k), len(bank)))
        else:
            self.bank, self.k = None, None

    def _record(self, module, args):
        if self._seen is not None:  # only inside our own forward: the model's other users are not recorded
            self._seen.append(args[0].flatten(1))

    def forward(self, x: torch.Tensor):
        self._seen = []
        try:
            logits = self.net(x)
            seen = self._seen
        finally:
            self._seen = None
        feats = seen[0] if len(seen) == 1 else torch.stack(seen).mean(0)
        feats = F.normalize(feats.float(), dim=1)
        if self.bank is None:
            return logits, feats
        kth = (feats @ self.bank.float().T).topk(self.k, dim=1).values[:, -1]
        return logits, feats, (2.0 - 2.0 * kth).clamp_min(0.0).sqrt()

    def remove(self) -> None:
        """Take the hook off the model (it records nothing outside this module's forward anyway)."""
        self._hook.remove()
