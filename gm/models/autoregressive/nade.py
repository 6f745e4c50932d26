"""Neural autoregressive density estimator (book 20.10.10; Larochelle & Murray 2011).

h_t = sigmoid(c + W[:, :t] xo_:t),  p(xo_t = 1 | xo_<t) = sigmoid(b_t + V_t . h_t).

The input weights W (H, d) are shared between positions, so the pre-activations obey
a_{t+1} = a_t + W[:, t] xo_t: all d conditionals come from prefix sums in one pass
(:mod:`gm.models.autoregressive.nade_pass`) instead of d separate networks (book eq.
20.83-20.84).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gm.base import Curve
from gm.config import ranged
from gm.models.autoregressive.base import OrderedARConfig, OrderedBernoulliAR
from gm.models.autoregressive.nade_pass import NADELogits
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class NADEConfig(OrderedARConfig):
    n_hidden: int = ranged(50, ge=1)
    lr: float = ranged(0.01, gt=0)


@register("nade")
class NADE(OrderedBernoulliAR):
    """W (H, d) shared input weights, c (H,), V (d, H) output weights, b (d,)."""

    Config = NADEConfig
    progress = Curve("nll", "training negative log-likelihood", "nats per image")

    def __init__(self, data_dim: int, config: NADEConfig):
        super().__init__(data_dim, config)
        H = config.n_hidden
        # default init from torch's global RNG (seeded by the pipeline), U(-1/sqrt(fan_in), .)
        self.W = nn.Parameter((2 * torch.rand(H, data_dim) - 1) / math.sqrt(data_dim))
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter((2 * torch.rand(data_dim, H) - 1) / math.sqrt(H))
        self.b = nn.Parameter(torch.zeros(data_dim))

    def ordered_logits(self, xo: Tensor) -> Tensor:
        """Logits of the d conditionals, xo (n, d) -> (n, d)."""
        return NADELogits.apply(xo, self.W, self.c, self.V, self.b)

    def naive_ordered_logits(self, xo: Tensor) -> Tensor:
        """The same logits by d separate O(dH) products (reference for tests), (n, d)."""
        cols = [torch.sigmoid(xo[:, :t] @ self.W[:, :t].T + self.c) @ self.V[t] + self.b[t]
                for t in range(self.data_dim)]
        return torch.stack(cols, 1)

    def sample_ordered(self, n: int, generator: torch.Generator) -> Tensor:
        """Incremental ancestral sampling, O(dH) per sample, all n chains in parallel."""
        a = self.c.expand(n, -1).clone()
        xo = torch.zeros(n, self.data_dim, device=a.device, dtype=a.dtype)
        for t in range(self.data_dim):
            p = torch.sigmoid(torch.sigmoid(a) @ self.V[t] + self.b[t])
            xo[:, t] = bernoulli(p, generator)
            a += xo[:, t, None] * self.W[:, t]
        return xo
