"""Masked autoencoder for distribution estimation, MADE (Germain et al. 2015; book 20.10.10).

An MLP whose weight matrices are multiplied by binary masks built from unit degrees: input
i has degree m(i) = its position (1..d) in an ordering, hidden unit k a degree in
[min degree of the previous layer, d - 1], a hidden weight is kept iff m(k) >= m(k') and an
output weight iff m(i) > m(k).  Output i then depends only on inputs earlier in the ordering,
so sigmoid(output) are exact conditionals and one pass gives log p(x).

Order- and connectivity-agnostic training (Germain et al. 2015, sec. 4): the model holds
``n_masks`` (ordering, hidden degrees) draws and trains on one per minibatch, in turn.
Each mask k defines a normalised autoregressive model p_k sharing the weights.  At test time
the ensemble averages probabilities, not log-probabilities:

    log p_ens(x) = log (1/K sum_{k<K} p_k(x)),

the EXACT log-likelihood of the uniform mixture of the first K models (a normalised
distribution whose sampler picks k uniformly, then samples p_k).  K is an evaluation setting,
``budget.ensemble_masks`` (0: all ``n_masks``); :meth:`MADE.prepare_evaluation` makes the
sampler draw from that same mixture.  It is not the
likelihood of any single ordering; by Jensen it is >= the mean of the log p_k(x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve, LogLikelihood
from gm.config import ranged, require
from gm.errors import ConfigError
from gm.models.autoregressive.base import ARConfig, AutoregressiveModel, sample_in_order
from gm.registry import register


@dataclass(frozen=True)
class MADEConfig(ARConfig):
    hidden_sizes: tuple[int, ...] = ranged((500,), ge=1, each=True)
    n_masks: int = ranged(8, ge=1)   # orderings/connectivities trained on, one per minibatch
    order_agnostic: bool = True      # masks 1.. random orderings (mask 0, or all if False: raster)
    connectivity_agnostic: bool = True   # each mask its own hidden degrees (else mask 0's)
    lr: float = ranged(0.005, gt=0)

    def __post_init__(self):
        super().__post_init__()
        require(len(self.hidden_sizes) >= 1, "hidden_sizes", "need one or more hidden layers")
        require(self.n_masks == 1 or self.order_agnostic or self.connectivity_agnostic,
                "n_masks", "several masks need order_agnostic or connectivity_agnostic "
                "(otherwise they are all identical)")


@register("made")
class MADE(AutoregressiveModel):
    """Masked MLP d -> hidden_sizes -> d (ReLU); degrees of every mask kept in buffers."""

    Config = MADEConfig
    progress = Curve("nll", "training negative log-likelihood (one mask per step)",
                     "nats per image")
    input_kind = "binary"

    def __init__(self, data_dim: int, config: MADEConfig):
        super().__init__(data_dim, config)
        d, K = data_dim, config.n_masks
        sizes = (d, *config.hidden_sizes, d)
        # nn.Linear's default init, from torch's global RNG (seeded by the pipeline)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # degrees, also from the global RNG at construction: part of the initialisation
        orders = [torch.arange(d) if k == 0 or not config.order_agnostic else torch.randperm(d)
                  for k in range(K)]
        rank = torch.stack([torch.argsort(o) for o in orders])          # (K, d), 0-based
        self.register_buffer("input_degrees", rank + 1)                 # (K, d) in 1..d
        low = self.input_degrees.min(1).values                          # (K,)
        for l, h in enumerate(config.hidden_sizes):
            deg = torch.stack([_hidden_degrees(int(low[k]), d, h) for k in range(K)])
            if not config.connectivity_agnostic:
                deg = deg[:1].expand(K, -1).clone()
            self.register_buffer(f"hidden_degrees_{l}", deg)           # (K, h)
            low = deg.min(1).values
        self.register_buffer("mask_step", torch.zeros((), dtype=torch.long))
        # masks are a function of the degree buffers: built once per (mask, dtype, device),
        # dropped when a checkpoint replaces the buffers
        self._mask_cache: dict[tuple, list[Tensor]] = {}
        self.register_load_state_dict_post_hook(lambda module, _: module._mask_cache.clear())
        self.n_eval_masks = config.n_masks   # the test-time ensemble; set by prepare_evaluation

    def ensemble_size(self, budget: Budget) -> int:
        """Masks averaged at test time under ``budget``: ensemble_masks, 0 meaning all."""
        k = budget.ensemble_masks or self.config.n_masks
        if k > self.config.n_masks:
            raise ConfigError("ensemble_masks", f"must be <= n_masks={self.config.n_masks} "
                              f"of the trained model, got {k}")
        return k

    def prepare_evaluation(self, x_val: Tensor, *, generator: torch.Generator,
                           budget: Budget) -> None:
        """Evaluate, and sample, the mixture of the first ``budget.ensemble_masks`` masks (no
        random draws; x_val is unused)."""
        self.n_eval_masks = self.ensemble_size(budget)

    def ordering(self, k: int) -> Tensor:
        """Ordering of mask k: position t holds variable order[t], (d,) long."""
        return torch.argsort(self.input_degrees[k])

    def masks(self, k: int) -> list[Tensor]:
        """The masks of every layer for mask k, each shaped like its weight (out, in)."""
        w = self.layers[0].weight
        key = (k, w.dtype, w.device)
        if key not in self._mask_cache:
            degs = [self.input_degrees[k]] + [getattr(self, f"hidden_degrees_{l}")[k]
                                              for l in range(len(self.config.hidden_sizes))]
            ms = [(out[:, None] >= inp[None, :]) for inp, out in zip(degs[:-1], degs[1:])]
            ms.append(self.input_degrees[k][:, None] > degs[-1][None, :])
            self._mask_cache[key] = [m.to(w.dtype) for m in ms]
        return self._mask_cache[key]

    def conditional_logits(self, x: Tensor, k: int = 0) -> Tensor:
        """Logits of p_k(x_i = 1 | x before i in ordering k), (n, d) -> (n, d)."""
        h = x
        for i, (layer, m) in enumerate(zip(self.layers, self.masks(k))):
            h = F.linear(h, layer.weight * m, layer.bias)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def log_prob_mask(self, x: Tensor, k: int) -> Tensor:
        """Exact log p_k(x) of the autoregressive model of mask k, (n,)."""
        return -F.binary_cross_entropy_with_logits(self.conditional_logits(x, k), x,
                                                   reduction="none").sum(1)

    def log_prob(self, x: Tensor, masks: int | None = None) -> Tensor:
        """Exact log of the ensemble (uniform mixture) over the first ``masks`` masks (default
        :attr:`n_eval_masks`), (n,)."""
        K = masks or self.n_eval_masks
        if K == 1:
            return self.log_prob_mask(x, 0)
        lp = torch.stack([self.log_prob_mask(x, k) for k in range(K)])
        return torch.logsumexp(lp, 0) - math.log(K)

    def loss(self, x: Tensor) -> Tensor:
        """NLL under the next mask in turn (order-agnostic training), then advance the turn."""
        k = int(self.mask_step) % self.config.n_masks
        self.mask_step += 1
        return -self.log_prob_mask(x, k).mean()

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Exact log-likelihood of the mixture of the first ``budget.ensemble_masks`` masks."""
        k = self.ensemble_size(budget)
        return LogLikelihood(self.log_prob(x, k), "exact", "exact",
                             info={"ensemble_masks": float(k)})

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Exact samples of the ensemble: mask k ~ uniform, then d passes along ordering k."""
        dev, dt = self.layers[0].weight.device, self.layers[0].weight.dtype
        comp = torch.randint(self.n_eval_masks, (n,), generator=generator, device=dev)
        x = torch.empty(n, self.data_dim, device=dev, dtype=dt)
        for k in range(self.n_eval_masks):
            rows = (comp == k).nonzero().flatten()
            if rows.numel() == 0:
                continue
            order = self.ordering(k)

            def ordered_logits(xo, k=k, order=order):
                xk = torch.empty_like(xo)
                xk[:, order] = xo
                return self.conditional_logits(xk, k)[:, order]

            xk = torch.empty(rows.numel(), self.data_dim, device=dev, dtype=dt)
            xk[:, order] = sample_in_order(ordered_logits, rows.numel(), self.data_dim,
                                           generator, device=dev, dtype=dt)
            x[rows] = xk
        return x


def _hidden_degrees(low: int, d: int, size: int) -> Tensor:
    """Degrees of a hidden layer, uniform on [low, d - 1] (Germain et al. 2015, eq. 13)."""
    high = max(d - 1, low)
    return torch.randint(low, high + 1, (size,))
