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

from gm.base import Budget, GenerativeModel, LogLikelihood
from gm.config import require
from gm.estimators.ais import ais_log_z, beta_schedule
from gm.estimators.exact import binary_states, enumerate_log_z
from gm.estimators.raise_ais import ais_sandwich, raise_log_likelihood, sandwich_estimates
from gm.models.rbm import base_rate, observe_batch
from gm.ops import bernoulli
from gm.registry import register


@dataclass(frozen=True)
class BMConfig:
    lr: float = 0.05
    gradient: Literal["auto", "exact", "pcd"] = "auto"  # auto: exact when d <= exact_max_bits
    exact_max_bits: int = 16      # enumerate 2^d states for the exact gradient up to this d
    n_chains: int = 100           # persistent Gibbs chains (PCD)
    gibbs_sweeps: int = 1         # sweeps over all units per PCD update
    momentum: float = 0.5
    weight_decay: float = 1e-4
    init_std: float = 0.01
    sample_sweeps: int = 200      # Gibbs sweeps per sample() chain
    raise_chains: int = 5         # reverse-AIS chains per test example

    def __post_init__(self):
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(1 <= self.exact_max_bits <= 24, "exact_max_bits",
                f"must be in [1, 24], got {self.exact_max_bits}")
        for name in ("n_chains", "gibbs_sweeps", "sample_sweeps", "raise_chains"):
            v = getattr(self, name)
            require(v >= 1, name, f"must be >= 1, got {v}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


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
class BoltzmannMachine(GenerativeModel):
    """Fully visible BM: U (d, d) symmetric with zero diagonal, b (d,)."""

    Config = BMConfig
    input_kind = "binary"

    def __init__(self, data_dim: int, config: BMConfig):
        super().__init__(data_dim, config)
        a = torch.triu(config.init_std * torch.randn(data_dim, data_dim), 1)
        self.U = nn.Parameter(a + a.T)
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.register_buffer("data_sum", torch.zeros(data_dim, dtype=torch.float64))
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("chains", torch.zeros(config.n_chains, data_dim))  # PCD state
        self._states: tuple[Tensor, Tensor] | None = None   # cache for exact_statistics

    @property
    def exact_gradient(self) -> bool:
        cfg = self.config
        return cfg.gradient == "exact" or (cfg.gradient == "auto"
                                           and self.data_dim <= cfg.exact_max_bits)

    def log_f(self, x: Tensor) -> Tensor:
        """-E(x) = x'Ux + b'x, (n,)."""
        return ((x @ self.U) * x).sum(1) + x @ self.b

    def base_rate(self) -> Tensor:
        return base_rate(self.data_sum, self.data_count).to(self.b.dtype)

    # --- statistics and training ----------------------------------------------------------
    @torch.no_grad()
    def model_statistics(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(E_model[x x'] (d, d), E_model[x] (d,)): exact by enumeration, or from the
        persistent chains after ``gibbs_sweeps`` sweeps (which it advances)."""
        if self.exact_gradient:
            return self.exact_statistics()
        x = self.chains
        for _ in range(self.config.gibbs_sweeps):
            x = gibbs_sweep(x, self.U, self.b, generator)
        self.chains.copy_(x)
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

    def make_optimizers(self):
        cfg = self.config
        return {"sgd": torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        observe_batch(x, self.data_sum, self.data_count, self.b)
        if self.data_count == x.shape[0] and not self.exact_gradient:  # first update: PCD chains
            self.chains.copy_(bernoulli(self.base_rate().expand_as(self.chains), generator))
        xx_model, x_model = self.model_statistics(generator)
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
        x = bernoulli(self.base_rate().expand(n, -1).contiguous(), generator)
        for _ in range(self.config.sample_sweeps):
            x = gibbs_sweep(x, self.U, self.b, generator)
        return x

    # --- likelihood ------------------------------------------------------------------------
    @torch.no_grad()
    def log_z_exact(self, max_bits: int = 20) -> float:
        U, b = self.U.double(), self.b.double()
        return float(enumerate_log_z(lambda s: ((s @ U) * s).sum(1) + s @ b, self.data_dim,
                                     max_bits=max_bits, device=U.device))

    def annealing_path(self) -> "BMAnnealingPath":
        return BMAnnealingPath(self.U, self.b, self.base_rate())

    @torch.no_grad()
    def ais_sandwich(self, x: Tensor, budget: Budget, generator: torch.Generator) -> LogLikelihood:
        """Forward-AIS log p(x) with bounds {"lower": RAISE, "upper": AIS}."""
        path = self.annealing_path()
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        res = ais_log_z(path, betas, budget.ais_chains, generator, desc="AIS bm")
        xd = x.double()
        start = lambda v, g: (v, path.log_f(v, 1.0))  # noqa: E731
        lower = raise_log_likelihood(path, start, xd, self.config.raise_chains, betas, generator,
                                     desc="RAISE bm")
        return ais_sandwich(path.log_f(xd, 1.0), res, lower, info={
            "ais_chains": budget.ais_chains, "ais_betas": budget.ais_betas,
            "raise_chains": self.config.raise_chains})

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        if self.data_dim <= budget.exact_max_bits:
            log_z = self.log_z_exact(budget.exact_max_bits)
            return LogLikelihood(self.log_f(x.to(self.U.dtype)).double() - log_z, "exact",
                                 "exact", info={"log_z": log_z})
        return self.ais_sandwich(x, budget, generator)

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        if self.data_dim > budget.exact_max_bits:
            return {}
        return sandwich_estimates(self.ais_sandwich(x, budget, generator))


class BMAnnealingPath:
    """p_beta(x) ∝ exp((1-beta) b_A'x + beta (b'x + x'Ux)), from the base-rate model
    (independent units with biases b_A = logit(data mean), Z_0 = prod_i (1 + exp(b_A,i)))
    to the BM; transitions are Gibbs sweeps 1..d, and their reversals d..1 for RAISE."""

    def __init__(self, U: Tensor, b: Tensor, base_rate: Tensor):
        self.U, self.b = U.detach().double(), b.detach().double()
        p = base_rate.double()
        self.b_a = torch.log(p / (1 - p))

    def base_log_z(self) -> float:
        return float(F.softplus(self.b_a).sum())

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        return bernoulli(torch.sigmoid(self.b_a).expand(n, -1).contiguous(), generator)

    def log_f(self, x: Tensor, beta: float) -> Tensor:
        return x @ ((1 - beta) * self.b_a + beta * self.b) + beta * ((x @ self.U) * x).sum(1)

    def transition(self, x: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        return gibbs_sweep(x, beta * self.U, (1 - beta) * self.b_a + beta * self.b, generator)

    def reverse_transition(self, x: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        return gibbs_sweep(x, beta * self.U, (1 - beta) * self.b_a + beta * self.b, generator,
                           reverse=True)
