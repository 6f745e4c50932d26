"""Shared machinery of the autoregressive networks (book sections 20.10.7-20.10.10).

A fully visible autoregressive model factorises p(x) = prod_t p(x_{o_t} | x_{o_<t}) along an
ordering o of the d variables, so log p(x) is an exact sum of d normalised conditionals and
ancestral sampling takes one conditional per position (Frey 1998; Bengio & Bengio 2000).

Here: the common training/evaluation base classes, orderings, the generic sequential
sampler, and :func:`dependency_matrix`, which checks the autoregressive property by
back-propagating each output separately (after karpathy/pytorch-made, as an assertion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gm.optim import Adam, Optimizer
from gm.base import Budget, Extras, GenerativeModel, LogLikelihood
from gm.config import Checked, ranged
from gm.errors import DivergenceError
from gm.ops import bernoulli

Ordering = Literal["natural", "random"]


@dataclass(frozen=True)
class ARConfig(Checked):
    """Optimisation fields shared by every autoregressive model (Adam on the exact NLL)."""

    lr: float = ranged(1e-3, gt=0)
    weight_decay: float = ranged(0.0, ge=0)  # L2 penalty of Adam (coupled), on every parameter


@dataclass(frozen=True)
class OrderedARConfig(ARConfig):
    """ARConfig plus the ordering of a single-ordering model."""

    ordering: Ordering = "natural"   # "natural" (raster) or "random" (drawn at initialisation)


def make_ordering(d: int, kind: str) -> Tensor:
    """Ordering o (d,) long: position t holds variable o[t].

    "natural" is raster order; "random" a permutation from torch's global RNG, which the
    pipeline seeds right before building the model (so it is part of the initialisation).
    """
    return torch.arange(d) if kind == "natural" else torch.randperm(d)


def sample_in_order(ordered_logits: Callable[[Tensor], Tensor], n: int, d: int,
                    generator: torch.Generator, *, device=None, dtype=torch.float32,
                    given: Tensor | None = None) -> Tensor:
    """Ancestral sampling with d passes of a network, all n chains in parallel.

    ordered_logits: (n, d) -> (n, d) logits of p(x_t = 1 | x_<t) in ordered coordinates.
    given: optional (n, m) values of the first m ordered positions; only the rest are drawn,
    from the exact conditional p(x_{m:} | x_{:m}).
    Returns (n, d) binary samples in ordered coordinates.  Costs d - m full forward passes;
    models whose structure allows an incremental update override the unconditional case.
    """
    xo = torch.zeros(n, d, device=device, dtype=dtype)
    m = 0 if given is None else given.shape[1]
    if m:
        xo[:, :m] = given
    for t in range(m, d):
        xo[:, t] = bernoulli(torch.sigmoid(ordered_logits(xo)[:, t]), generator)
    return xo


def dependency_matrix(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """D[i, j] = True iff output i of ``fn`` has a non-zero gradient in input j at x.

    fn: (1, d) -> (1, d_out), x: (d,).  One backward pass per output, so for an
    autoregressive network D[i, j] may be True only when j precedes i in its ordering.
    Returns (d_out, d) bool.
    """
    x = x.detach().clone().reshape(1, -1).requires_grad_(True)
    out = fn(x).reshape(-1)
    rows = []
    for i in range(out.numel()):
        (g,) = torch.autograd.grad(out[i], x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x[0], dtype=torch.bool) if g is None else g[0] != 0)
    return torch.stack(rows)


def allowed_dependencies(order: Tensor) -> Tensor:
    """A[i, j] = True iff variable j precedes variable i in ``order`` (d,) -> (d, d) bool."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank[None, :] < rank[:, None]


class AutoregressiveModel(GenerativeModel):
    """Base of the autoregressive nets: exact ``log_prob``, trained by Adam on its negation.

    Subclasses define ``log_prob(x) -> (n,)`` and ``sample``; they may override ``loss`` (e.g.
    MADE trains one mask per step).  The optimiser is created on first use, after the model
    has been moved to its device, and is saved through :meth:`optimizers`.
    """

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, (n, d) -> (n,)."""
        raise NotImplementedError

    def loss(self, x: Tensor) -> Tensor:
        """Training objective: mean negative log-likelihood of the minibatch (nats)."""
        return -self.log_prob(x).mean()

    def make_optimizers(self) -> dict[str, Optimizer]:
        return {"adam": Adam(self.parameters(), lr=self.config.lr,
                                         weight_decay=self.config.weight_decay)}

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        opt = self.optimizers()["adam"]
        opt.zero_grad(set_to_none=True)
        loss = self.loss(x)
        if not torch.isfinite(loss.detach()):
            raise DivergenceError(f"{self.name}: non-finite training loss {float(loss)}; "
                                  "lower lr")
        loss.backward()
        opt.step()
        return {"nll": float(loss.detach())}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Exact: the sum of the d normalised conditionals, budget.batch_size examples at a
        time (a network's activations grow with the batch: MADE's ensemble holds (batch, width)
        per layer and mask; all 10,000 28x28 test images at once held 16 GB in NADE's former
        (d, batch, H) pass)."""
        return LogLikelihood(torch.cat([self.log_prob(xb) for xb in x.split(budget.batch_size)]),
                             "exact", "exact")


class OrderedBernoulliAR(AutoregressiveModel):
    """Binary autoregressive model along one fixed ordering (buffer ``order``).

    Subclasses work in ordered coordinates xo = x[:, order] and implement
    ``ordered_logits(xo) -> (n, d)``, whose column t may depend on xo[:, :t] only.
    p(x) = prod_t Bernoulli(xo_t; sigmoid(logit_t)).
    """

    input_kind = "binary"

    def __init__(self, data_dim: int, config):
        super().__init__(data_dim, config)
        self.register_buffer("order", make_ordering(data_dim, config.ordering))

    def ordered_logits(self, xo: Tensor) -> Tensor:
        raise NotImplementedError

    def conditional_logits(self, x: Tensor) -> Tensor:
        """Logits of p(x_i = 1 | variables before i), (n, d) in data coordinates."""
        out = torch.empty_like(x)
        out[:, self.order] = self.ordered_logits(x[:, self.order])
        return out

    def log_prob(self, x: Tensor) -> Tensor:
        xo = x[:, self.order]
        return -F.binary_cross_entropy_with_logits(self.ordered_logits(xo), xo,
                                                   reduction="none").sum(1)

    def sample_ordered(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, d) binary samples in ordered coordinates (generic d-pass sampler)."""
        return sample_in_order(self.ordered_logits, n, self.data_dim, generator,
                               device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        x = torch.empty(n, self.data_dim, device=self.device, dtype=self.dtype)
        x[:, self.order] = self.sample_ordered(n, generator)
        return x

    @torch.no_grad()
    def extras(self, x: Tensor, *, generator: torch.Generator, budget: Budget,
               classifier=None) -> Extras:
        """Exact conditionals of the second half of the ordering given the first (the bottom
        of the image given the top, in raster order).

        metrics: "log_p_second_half_given_first", mean exact log p(xo_{d/2:} | xo_{:d/2}).
        images: "completions", 8 test images then the same 8 with their second half
        resampled from that conditional, (16, d).
        """
        half = self.data_dim // 2
        xo = x[:, self.order]
        second = torch.cat([    # log p(xo_{d/2:} | xo_{:d/2}) per example, in batches
            -F.binary_cross_entropy_with_logits(self.ordered_logits(xb), xb,
                                                reduction="none")[:, half:].sum(1)
            for xb in xo.split(budget.batch_size)])
        k = min(8, x.shape[0])
        filled = sample_in_order(self.ordered_logits, k, self.data_dim, generator,
                                 device=x.device, dtype=x.dtype, given=xo[:k, :half])
        completed = torch.empty_like(filled)
        completed[:, self.order] = filled
        return Extras(metrics={"log_p_second_half_given_first": float(second.mean())},
                      images={"completions": torch.cat([x[:k], completed])})


def strictly_lower_mask(d: int) -> Tensor:
    """M[t, s] = 1 iff s < t, (d, d) float: the connectivity of a left-to-right linear AR."""
    return torch.ones(d, d).tril(-1)


LOG_2PI = math.log(2 * math.pi)
