"""Activations that keep less for the backward pass, swapped into the model a run trains (training/build.py).

PyTorch's ReLU6 (`hardtanh`) keeps its *input* for the backward pass, in-place or not (the in-place version
keeps a copy). The input is the BatchNorm output before it, a tensor nothing else keeps: one more full-size
activation per ReLU6. `LeanReLU6` computes the same values and the same gradients from its *output* instead,
which the next convolution keeps anyway, so that tensor is shared rather than added. In EfficientNet-Lite0 at
224 px that is 23.5 of the 78.5 MiB each training image keeps (docs/benchmarks.md, "Memory").

Exactly the same numbers: forward min(max(x, 0), 6); backward the incoming gradient where 0 < x < 6 and 0
elsewhere (x is in (0, 6) exactly when its output is), as `hardtanh_backward` gives it. The module is still an
`nn.ReLU6` with the same (empty) state dict, so checkpoints, exports (built again from the registry) and anything
that looks for ReLU6 layers see no difference; when scripted, traced, exported or compiled it is plain ReLU6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ReLU6FromOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = F.relu6(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        # hardtanh's own backward kernel, given the output for the input: the mask 0 < . < 6 is the same
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


def _plain() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class LeanReLU6(nn.ReLU6):
    """nn.ReLU6 that keeps its output, not its input, for the backward pass (same values, same gradients)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if _plain() or self.inplace or not torch.is_grad_enabled() or not input.requires_grad:
            return super().forward(input)
        return _ReLU6FromOutput.apply(input)


def lean_activations(model: nn.Module) -> int:
    """Swap every plain `nn.ReLU6` of `model` for a `LeanReLU6` (in place); returns how many were swapped."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.ReLU6 and not child.inplace:
                setattr(parent, name, LeanReLU6())
                swapped += 1
    return swapped
