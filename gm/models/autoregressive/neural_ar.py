"""Neural autoregressive network (book 20.10.9; Bengio & Bengio 2000).

One hidden group per position: group s (n_hidden units) sees xo_0..xo_s, and the logit of
position t reads the groups s < t, plus direct linear connections from xo_<t (so the model
contains the FVSBN, as in the paper):

    h_s = tanh(c_s + A_s xo_{<=s}),   logit_t = b_t + sum_{s<t} U_{t,s} h_s + sum_{s<t} D_ts xo_s.

Unlike NADE nothing is shared between positions, so a pass costs O(d^2 H).  The groups are
stored as two masked dense layers (hidden ((d-1) H, d), output (d, (d-1) H)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gm.base import Curve
from gm.config import ranged
from gm.models.autoregressive.base import OrderedARConfig, OrderedBernoulliAR, strictly_lower_mask
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class NeuralARConfig(OrderedARConfig):
    n_hidden: int = ranged(4, ge=1)  # hidden units per position (group size)
    direct: bool = True              # direct input -> output connections (logistic AR part)
    lr: float = ranged(0.005, gt=0)


@register("neural_ar")
class NeuralAR(OrderedBernoulliAR):
    """A ((d-1)H, d) and U (d, (d-1)H) masked by group, c ((d-1)H,), D (d, d), b (d,)."""

    Config = NeuralARConfig
    progress = Curve("nll", "training negative log-likelihood", "nats per image")

    def __init__(self, data_dim: int, config: NeuralARConfig):
        super().__init__(data_dim, config)
        d, H = data_dim, config.n_hidden
        # groups 0..d-2 (group d-1 would feed no output); group index of each hidden unit
        group = torch.arange(d - 1).repeat_interleave(H)
        pos = torch.arange(d)
        self.register_buffer("in_mask", (pos[None, :] <= group[:, None]).float())   # (dH, d)
        self.register_buffer("out_mask", (group[None, :] < pos[:, None]).float())   # (d, dH)
        self.register_buffer("direct_mask", strictly_lower_mask(d) * float(config.direct))
        # torch's global RNG (seeded by the pipeline); scale 1/sqrt(fan-in) of the masked layer
        fan_in = self.in_mask.sum(1, keepdim=True)
        self.A = nn.Parameter(torch.randn(group.numel(), d) / fan_in.sqrt())
        self.c = nn.Parameter(torch.zeros(group.numel()))
        self.U = nn.Parameter(torch.randn(d, group.numel()) / math.sqrt(max(group.numel(), 1)))
        self.D = nn.Parameter(torch.zeros(d, d))
        self.b = nn.Parameter(torch.zeros(d))

    def ordered_logits(self, xo: Tensor) -> Tensor:
        h = torch.tanh(xo @ (self.A * self.in_mask).T + self.c)          # (n, (d-1) H)
        return h @ (self.U * self.out_mask).T + xo @ (self.D * self.direct_mask).T + self.b

    def sample_ordered(self, n: int, generator: torch.Generator) -> Tensor:
        """Incremental: add xo_t's column to the hidden pre-activations after each draw, so a
        sample costs one forward pass, O(d^2 H), instead of d of them."""
        A, U, D = self.A * self.in_mask, self.U * self.out_mask, self.D * self.direct_mask
        pre = self.c.expand(n, -1).clone()
        direct = self.b.expand(n, -1).clone()
        xo = torch.zeros(n, self.data_dim, device=pre.device, dtype=pre.dtype)
        for t in range(self.data_dim):
            # groups s >= t are still partial, but U[t] masks them out
            logit = torch.tanh(pre) @ U[t] + direct[:, t]
            xo[:, t] = bernoulli(torch.sigmoid(logit), generator)
            pre += xo[:, t, None] * A[:, t]
            direct += xo[:, t, None] * D[:, t]
        return xo

    def n_parameters(self) -> int:
        return int(self.in_mask.sum() + self.out_mask.sum() + self.direct_mask.sum()
                   + self.c.numel() + self.b.numel())
