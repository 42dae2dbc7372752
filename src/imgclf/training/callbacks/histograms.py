"""--log-histograms: gradient and activation histograms in TensorBoard, and the stop of a diverging run."""

from __future__ import annotations

import math

import torch

from imgclf.core.callback import Callback
from imgclf.core.errors import TrainingDiverged


class Histograms(Callback):
    """--log-histograms N: every N steps, per-layer histograms and norms of gradients and activations in
    TensorBoard; at every step, a non-finite loss or gradient, or a gradient norm over EXPLODE times the median
    of the last WINDOW steps, stops the run with one line naming the step and the layer."""

    order = 60
    state_key = "histograms"
    EXPLODE, WINDOW, MIN_HISTORY = 100.0, 50, 10

    def __init__(self, every: int):
        self.every, self.norms, self.hooks, self.acts = every, [], [], {}

    def _due(self, trainer) -> bool:
        return (trainer.state.step + 1) % self.every == 0

    def on_step_start(self, trainer) -> None:
        if not self._due(trainer):
            return
        for name, m in trainer.step_model.named_children():
            self.hooks.append(m.register_forward_hook(self._keep(name)))

    def _keep(self, name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self.acts[name] = output.detach().float().cpu()

        return hook

    def on_after_backward(self, trainer) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        step = trainer.state.step + 1
        loss = float(trainer.loss.detach())
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"step {step}: the loss is {loss}; stopped at the last good checkpoint (lower --lr, or add --clip-grad)"
            )
        grads = {n: p.grad for n, p in trainer.step_model.named_parameters() if p.grad is not None}
        norms = {n: float(g.detach().float().norm()) for n, g in grads.items()}
        total = math.sqrt(sum(v * v for v in norms.values()))
        self._check(step, total, norms)
        if self._due(trainer):
            self._write(trainer.run_dir.writer, step, grads, norms, total)

    def _check(self, step: int, total: float, norms: dict) -> None:
        worst = max(norms, key=lambda n: norms[n] if math.isfinite(norms[n]) else math.inf, default="?")
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"step {step}: non-finite gradient in layer {worst}; stopped at the last good "
                "checkpoint (lower --lr, or add --clip-grad)"
            )
        history = sorted(self.norms[-self.WINDOW :])
        if len(history) >= self.MIN_HISTORY and total > self.EXPLODE * history[len(history) // 2]:
            raise TrainingDiverged(
                f"step {step}: the gradient norm exploded to {total:.3g} ({total / history[len(history) // 2]:.0f}x "
                f"the median of the last {len(history)} steps), largest in layer {worst}; stopped at "
                "the last good checkpoint (lower --lr, or add --clip-grad)"
            )
        self.norms.append(total)

    def _write(self, writer, step: int, grads: dict, norms: dict, total: float) -> None:
        writer.add_scalar("grad_norm/total", total, step)
        for n, g in grads.items():
            writer.add_histogram(f"grad/{n}", g.detach().float().cpu(), step)
            writer.add_scalar(f"grad_norm/{n}", norms[n], step)
        for n, a in self.acts.items():
            writer.add_histogram(f"activation/{n}", a, step)
            writer.add_scalar(f"activation_norm/{n}", float(a.norm()), step)
        self.acts = {}

    def state_dict(self) -> dict:
        return {"norms": self.norms[-self.WINDOW :]}

    def load_state_dict(self, state: dict) -> None:
        self.norms = list(state["norms"])
