"""Fully visible Boltzmann machine (book section 20.1).

E(x) = -x'Ux - b'x over x in {0,1}^d, with U symmetric and zero on the diagonal, so
p(x_i = 1 | x_-i) = sigmoid(b_i + 2 (U x)_i).  The maximum-likelihood gradient is

    d log p / d U_ij = E_data[x_i x_j] - E_model[x_i x_j],   d log p / d b_i = E_data[x_i] - E_model[x_i]

(book eq. 20.1-20.3): each weight moves with the statistics of its own two units only.
E_model is exact by enumerating all 2^d states when d is small, else estimated by persistent
Gibbs chains (PCD, Tieleman 2008) swept one unit at a time.  log p(x) is exact by enumeration
for small d, else forward AIS from the base-rate model with a RAISE sandwich.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve
from gm.config import ranged
from gm.estimators.exact import binary_states, enumerate_log_z
from gm.models.energy.base import BaseRatePath, EnergyModel, SGDConfig
from gm.registry import register


@dataclass(frozen=True)
class BMConfig(SGDConfig):
    gradient: Literal["auto", "exact", "pcd"] = "auto"  # auto: exact when d <= exact_gradient_bits
    exact_gradient_bits: int = ranged(16, ge=1, le=24)  # enumerate 2^d states for the exact
                                                        # gradient up to this d
    n_chains: int = ranged(100, ge=1)         # persistent Gibbs chains (PCD)
    gibbs_sweeps: int = ranged(1, ge=1)       # sweeps over all units per PCD update
    sample_sweeps: int = ranged(200, ge=1)    # Gibbs sweeps per sample() chain


def gibbs_sweep(x: Tensor, U: Tensor, bias: Tensor, generator: torch.Generator, *,
                reverse: bool = False) -> Tensor:
    """Update every unit of x (n, d) in turn from p(x_i = 1 | x_-i) = sigmoid(bias_i + 2 (xU)_i).

    U: (d, d) symmetric, zero diagonal.  Units in order 1..d, or d..1 when ``reverse``: the
    reverse sweep is the time reversal of the forward one (what RAISE runs backwards).

    The sweep is inherently sequential (every unit sees all others), so it costs d small
    operations; to keep them cheap, the uniforms u (n, d) are drawn at once from ``generator``
    and turned into thresholds: x_i = 1 iff u_i < sigmoid(a_i) iff 2 (U x)_i > logit(u_i) - bias_i,
    and the loop runs in NumPy on the CPU over the contiguous rows of x' (d, n), one
    vector-matrix product per unit (the chains are moved back to x's device afterwards).
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    thr = ((torch.log(u) - torch.log1p(-u) - bias) / 2).T.contiguous().cpu().numpy()
    xt = np.ascontiguousarray(x.detach().T.cpu().numpy())           # (d, n), a copy
    Un = U.detach().to(x.dtype).cpu().numpy()
    d = x.shape[1]
    for i in (range(d - 1, -1, -1) if reverse else range(d)):
        np.greater(Un[i] @ xt, thr[i], out=xt[i], casting="unsafe")
    return torch.from_numpy(np.ascontiguousarray(xt.T)).to(x.device)


@register("bm")
class BoltzmannMachine(EnergyModel):
    """Fully visible BM: U (d, d) symmetric with zero diagonal, b (d,)."""

    Config = BMConfig
    progress = Curve("stat_gap", "largest |data - model| pair statistic (no tractable objective)")

    def __init__(self, data_dim: int, config: BMConfig):
        super().__init__(data_dim, config)
        a = torch.triu(config.init_std * torch.randn(data_dim, data_dim), 1)
        self.U = nn.Parameter(a + a.T)
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.register_buffer("chains", torch.zeros(config.n_chains, data_dim))  # PCD state
        self._states: tuple[Tensor, Tensor] | None = None   # cache for exact_statistics

    @property
    def exact_gradient(self) -> bool:
        cfg = self.config
        return cfg.gradient == "exact" or (cfg.gradient == "auto"
                                           and self.data_dim <= cfg.exact_gradient_bits)

    def neg_energy(self, x: Tensor) -> Tensor:
        """-E(x) = x'Ux + b'x, (n,), in the dtype of x."""
        U, b = self.U.to(x.dtype), self.b.to(x.dtype)
        return ((x @ U) * x).sum(1) + x @ b

    def gibbs(self, x: Tensor, sweeps: int, generator: torch.Generator) -> Tensor:
        """``sweeps`` Gibbs sweeps over all units of x (n, d)."""
        for _ in range(sweeps):
            x = gibbs_sweep(x, self.U, self.b, generator)
        return x

    # --- statistics and training ----------------------------------------------------------
    @torch.no_grad()
    def model_statistics(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(E_model[x x'] (d, d), E_model[x] (d,)): exact by enumeration, or from the
        persistent chains after ``gibbs_sweeps`` sweeps (which it advances; x is the batch
        just observed)."""
        if self.exact_gradient:
            return self.exact_statistics()
        x = self.pcd_chains(x, self.config.gibbs_sweeps, generator)
        return x.T @ x / x.shape[0], x.mean(0)

    def exact_statistics(self) -> tuple[Tensor, Tensor]:
        """(E_model[x x'] (d, d), E_model[x] (d,)) by enumerating all 2^d states as a grid of
        the first k = d // 2 units (states A) by the other d - k (states B):
        log f(a, c) = a'U_AA a + c'U_BB c + 2 a'U_AB c + b_A'a + b_B'c, a 2^k x 2^(d-k) table
        built with one (2^k, k) x (k, d-k) x (d-k, 2^(d-k)) product instead of 2^d rows."""
        d, k, U, b = self.data_dim, self.data_dim // 2, self.U, self.b
        if self._states is None or self._states[0].device != U.device:
            self._states = (binary_states(k, device=U.device),
                            binary_states(d - k, device=U.device))
        A, B = self._states
        fa = ((A @ U[:k, :k]) * A).sum(1) + A @ b[:k]
        fb = ((B @ U[k:, k:]) * B).sum(1) + B @ b[k:]
        log_f = fa[:, None] + fb[None, :] + 2 * (A @ U[:k, k:]) @ B.T
        P = torch.softmax(log_f.reshape(-1), 0).reshape(log_f.shape)   # p(a, c)
        pa, pb = P.sum(1), P.sum(0)
        s_ab = A.T @ P @ B
        xx = torch.cat([torch.cat([(A * pa[:, None]).T @ A, s_ab], 1),
                        torch.cat([s_ab.T, (B * pb[:, None]).T @ B], 1)], 0)
        return xx, torch.cat([pa @ A, pb @ B])

    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.observe(x)
        xx_model, x_model = self.model_statistics(x, generator)
        dU = x.T @ x / x.shape[0] - xx_model            # book eq. 20.3, per pair (i, j)
        dU.fill_diagonal_(0.0)                          # x_i^2 = x_i: the diagonal is b's job
        self.U.grad = -dU
        self.b.grad = -(x.mean(0) - x_model)
        self.optimizers()["sgd"].step()
        self.U.fill_diagonal_(0.0)  # keep the diagonal exactly zero
        return {"stat_gap": float(dU.abs().max())}

    # --- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        return self.gibbs(self.chain_start(n, generator), self.config.sample_sweeps, generator)

    # --- likelihood ------------------------------------------------------------------------
    @torch.no_grad()
    def log_f(self, x: Tensor, budget: Budget) -> Tensor:
        """-E(x) in float64, (n,)."""
        return self.neg_energy(x.double())

    @torch.no_grad()
    def exact_log_z(self, budget: Budget) -> float | None:
        """Exact log Z by enumerating all 2^d states."""
        if self.data_dim > budget.exact_max_bits:
            return None
        return float(enumerate_log_z(self.neg_energy, self.data_dim,
                                     max_bits=budget.exact_max_bits, device=self.U.device))

    def annealing_path(self) -> "BMAnnealingPath":
        return BMAnnealingPath(self)


class BMAnnealingPath(BaseRatePath):
    """p_beta(x) ∝ exp((1-beta) b_A'x + beta (b'x + x'Ux)), from the base-rate model
    (independent units with biases b_A = logit(data mean), Z_0 = prod_i (1 + exp(b_A,i)))
    to the BM; transitions are Gibbs sweeps 1..d, and their reversals d..1 for RAISE."""

    def __init__(self, bm: BoltzmannMachine):
        super().__init__(bm.base_rate_logits())
        self.U, self.b = bm.U.detach().double(), bm.b.detach().double()

    def base_log_z(self) -> float:
        return float(F.softplus(self.b_a).sum())

    def log_f(self, x: Tensor, beta: float) -> Tensor:
        return x @ ((1 - beta) * self.b_a + beta * self.b) + beta * ((x @ self.U) * x).sum(1)

    def transition(self, x: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        return gibbs_sweep(x, beta * self.U, (1 - beta) * self.b_a + beta * self.b, generator)

    def reverse_transition(self, x: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        return gibbs_sweep(x, beta * self.U, (1 - beta) * self.b_a + beta * self.b, generator,
                           reverse=True)
