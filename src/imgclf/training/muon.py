"""--optimizer muon: Muon (Keller Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/) for the
convolution filters, SGD for everything else, as the CIFAR-10 speed records since airbench94 train.

Each filter's update is its Nesterov momentum orthogonalised: the (out, in x kh x kw) matrix replaced by the nearest
matrix with all singular values near 1, by three quintic Newton-Schulz iterations; the filter is first rescaled to
norm sqrt(out) (a BatchNorm follows it, so its scale carries nothing) and takes the step at --muon-lr. The first
convolution (the input layer, 3 channels in), grouped and depthwise convolutions, and every other parameter (BatchNorm's, biases, the head) take SGD's
step with --lr, --momentum, --nesterov and --weight-decay, as --optimizer sgd would. torch.optim.Muon (PyTorch 2.9)
takes 2-D parameters only, so a convolution's 4-D filter cannot be given to it; its rule is written here.
The learning-rate schedule scales both kinds of groups alike.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.sgd import sgd  # torch.optim.SGD's step as a function of the lists it updates

# the quintic iteration's coefficients (Jordan et al.): fast growth of small singular values, ending near 1 (the
# result's singular values lie around 0.5-1.5, which trains as well as the exact U V^T); 3 steps, as the CIFAR-10
# record (airbench94_muon) takes them
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """`g` (rows x cols) with its singular values moved near 1 (U V^T of its SVD, approximately), in `g`'s dtype."""
    a, b, c = NS_COEFFS
    x = g.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # the Gram matrix of the shorter side is the cheaper one
    x = x / (x.norm() + 1e-7)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


def muon_filters(model: nn.Module) -> set[int]:
    """The ids of the filters Muon steps (those that train, frozen now or not: training/build.param_groups
    decides): every dense convolution's 4-D weight but the input layer's. Grouped and depthwise convolutions
    (EfficientNet's) keep SGD: a depthwise filter, one 3x3 per channel, is not a matrix of a layer's inputs."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return {id(m.weight) for m in convs[1:] if m.groups == 1}


class MuonSGD(torch.optim.Optimizer):
    """Groups with "muon": True take Muon's step (with their own "momentum", always Nesterov; no weight decay: the
    filter's norm is set each step), the others SGD's (torch.optim.SGD's rule: weight decay added to the gradient,
    momentum, Nesterov where asked). Each group's "lr" is what the schedule scales."""

    def __init__(self, groups, *, lr: float, momentum: float, nesterov: bool, weight_decay: float):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, muon=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(group, params)
            else:
                self._sgd(group, params)
        return loss

    def _buffers(self, params) -> list[torch.Tensor | None]:
        return [self.state[p].get("momentum_buffer") for p in params]

    def _sgd(self, group: dict, params: list) -> None:
        bufs = self._buffers(params)
        sgd(
            params,
            [p.grad for p in params],
            bufs,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=0.0,
            nesterov=group["nesterov"] and group["momentum"] > 0,
            maximize=False,
        )
        for p, b in zip(params, bufs):
            if b is not None:
                self.state[p]["momentum_buffer"] = b

    def _muon(self, group: dict, params: list) -> None:
        m = group["momentum"]
        for p in params:
            buf = self.state[p].get("momentum_buffer")
            if buf is None:
                buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            buf.mul_(m).add_(p.grad)
            g = p.grad.add(buf, alpha=m)  # Nesterov
            p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
            p.add_(orthogonalise(g.reshape(len(g), -1)).view_as(p), alpha=-group["lr"])
