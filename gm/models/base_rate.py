"""The base-rate model: independent pixels at the clipped training-data means.

It is the tractable start of every Boltzmann machine's AIS path (Salakhutdinov & Murray 2008,
sec. 4.2), the initial visible biases of Boltzmann machines (Hinton 2010, "A practical guide
to training RBMs", sec. 8.1), and where the chains of autoencoder samplers start.  One module
holds its running statistics for every model that needs them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gm.ops import bernoulli

CLIP = (0.005, 0.995)   # pixel means are clipped so that their logits stay finite


def base_rate_logit(x: Tensor) -> Tensor:
    """Logits of the clipped pixel means of a batch x (n, d) -> (d,) float64."""
    p = x.double().mean(0).clamp(*CLIP)
    return torch.log(p / (1 - p))


class BaseRate(nn.Module):
    """Running pixel means of the training data.

    Buffers (so checkpoints resume exactly): ``total`` (d,) float64 sum, ``count`` () float64.
    """

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("total", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.first_batch = False    # whether the last update was the first one (not saved)
        self._seen = False          # whether count > 0 is known (saves a device sync per update)

    def update(self, x: Tensor, visible_bias: Tensor | None = None) -> None:
        """Add batch x (n, d); on the first batch, start ``visible_bias`` (if given) at the
        logits of that batch's pixel means."""
        # Runs once per training step, so no no_grad decorator, and attributes are set only
        # when they change: each costs as much as a small tensor operation.
        x = x.detach()
        if not self._seen:
            self._seen = True
            self.first_batch = self.count.item() == 0
            if self.first_batch and visible_bias is not None:
                with torch.no_grad():
                    visible_bias.copy_(base_rate_logit(x).to(visible_bias.dtype))
        elif self.first_batch:
            self.first_batch = False
        self.total.add_(x.sum(0, dtype=torch.float64))
        self.count.add_(x.shape[0])

    def mean(self) -> Tensor:
        """(d,) float64 clipped pixel means, 0.5 before any data."""
        if self.count == 0:
            return torch.full_like(self.total, 0.5)
        return (self.total / self.count).clamp(*CLIP)

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
        """(n, d) independent Bernoulli draws at the pixel means."""
        return bernoulli(self.mean().to(dtype).expand(n, -1).contiguous(), generator)
