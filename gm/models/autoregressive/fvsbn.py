"""Fully visible sigmoid belief network: the logistic linear autoregressive net (book 20.10.8).

p(x_t = 1 | x_<t) = sigmoid(b_t + sum_{s<t} W_ts x_s) along an ordering (Frey 1998), i.e. a
logistic regression per position; d(d+1)/2 free parameters, exact log-likelihood.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gm.base import Curve
from gm.config import ranged
from gm.models.autoregressive.base import OrderedARConfig, OrderedBernoulliAR, strictly_lower_mask
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class FVSBNConfig(OrderedARConfig):
    lr: float = ranged(0.02, gt=0)


@register("fvsbn")
class FVSBN(OrderedBernoulliAR):
    """W (d, d) masked to its strict lower triangle, b (d,), both in ordered coordinates."""

    Config = FVSBNConfig
    progress = Curve("nll", "training negative log-likelihood", "nats per image")

    def __init__(self, data_dim: int, config: FVSBNConfig):
        super().__init__(data_dim, config)
        self.register_buffer("mask", strictly_lower_mask(data_dim))
        self.W = nn.Parameter(torch.zeros(data_dim, data_dim))
        self.b = nn.Parameter(torch.zeros(data_dim))

    def ordered_logits(self, xo: Tensor) -> Tensor:
        """(n, d) -> (n, d): logit_t = b_t + sum_{s<t} W_ts xo_s."""
        return xo @ (self.W * self.mask).T + self.b

    def sample_ordered(self, n: int, generator: torch.Generator) -> Tensor:
        """Incremental: after drawing xo_t add xo_t W[:, t] to every logit, O(d^2) per sample."""
        W = self.W * self.mask
        logits = self.b.expand(n, -1).clone()
        xo = torch.zeros_like(logits)
        for t in range(self.data_dim):
            xo[:, t] = bernoulli(torch.sigmoid(logits[:, t]), generator)
            logits += xo[:, t, None] * W[:, t]
        return xo

    def n_parameters(self) -> int:
        return int(self.mask.sum()) + self.b.numel()
