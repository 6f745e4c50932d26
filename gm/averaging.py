"""Exponential moving average of a network's weights (Polyak & Juditsky 1992), the weights that
Ho et al. (2020) evaluate and sample a diffusion model with (their decay 0.9999).

avg_k = decay * avg_{k-1} + (1 - decay) * theta_k from avg_0 = 0, used as
avg_k / (1 - decay^k): bias-corrected as Adam's moments (Kingma & Ba 2015), so the weights of
the average sum to one and a short run is not pulled toward the zero start.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightAverage(nn.Module):
    """The average of ``module``'s parameters, held as buffers (saved, loaded and moved with the
    model that owns it).  :meth:`update` after each optimiser step; :meth:`call` runs the
    module with the averaged weights in place of its own."""

    def __init__(self, module: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.names = [name for name, _ in module.named_parameters()]
        for i, (_, p) in enumerate(module.named_parameters()):
            self.register_buffer(f"avg{i}", torch.zeros_like(p.detach()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _sums(self) -> list[Tensor]:
        return [getattr(self, f"avg{i}") for i in range(len(self.names))]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """avg <- decay * avg + (1 - decay) * theta, for the current parameters theta."""
        self.steps += 1
        torch._foreach_lerp_(self._sums(), [p.detach() for p in module.parameters()],
                             1 - self.decay)

    def call(self, module: nn.Module, *args):
        """``module(*args)`` with the averaged weights (its own before the first update)."""
        steps = int(self.steps)
        if steps == 0:
            return module(*args)
        scale = 1 - self.decay ** steps
        weights = {name: avg / scale for name, avg in zip(self.names, self._sums())}
        return torch.func.functional_call(module, weights, args)
