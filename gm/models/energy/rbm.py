"""Restricted Boltzmann machine with binary units (book section 20.2).

E(v, h) = -b'v - c'h - v'Wh.  Trained by contrastive divergence CD-k (Hinton 2002) or
persistent CD (Tieleman 2008), with momentum and L2 weight decay (Hinton 2010, "A practical
guide to training RBMs").  log p(v) is exact by enumerating the smaller layer when it is small
enough, else estimated by AIS from a base-rate model (Salakhutdinov & Murray 2008) with a RAISE
sandwich (:class:`~gm.models.energy.base.EnergyModel`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, Curve
from gm.config import ranged
from gm.estimators.exact import enumerate_log_z
from gm.linalg import addmm, moment_difference
from gm.models.energy.base import BaseRatePath, CDConfig, EnergyModel
from gm.ops import Uniforms, bernoulli
from gm.registry import register


@dataclass(frozen=True)
class RBMConfig(CDConfig):
    n_hidden: int = ranged(16, ge=1)


@register("rbm")
class RBM(EnergyModel):
    """Binary RBM: W (n_visible, n_hidden), b (n_visible,), c (n_hidden,)."""

    Config = RBMConfig
    progress = Curve("recon_error", "reconstruction error (CD has no tractable objective)",
                     "squared error per image")

    def __init__(self, data_dim: int, config: RBMConfig):
        super().__init__(data_dim, config)
        # initial weights come from torch's global RNG, which the pipeline seeds per run
        self.W = nn.Parameter(config.init_std * torch.randn(data_dim, config.n_hidden))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.c = nn.Parameter(torch.zeros(config.n_hidden))
        self.register_buffer(  # PCD's persistent chains: their hidden states, (n_chains, H)
            "hidden_chains", torch.zeros(config.n_chains if config.persistent else 0,
                                         config.n_hidden))
        self._update_uniforms: dict[tuple, Uniforms] = {}   # see update_uniforms

    # --- conditionals and energies -------------------------------------------------------
    def p_h(self, v: Tensor) -> Tensor:
        """P(h_j = 1 | v), (n, n_hidden)."""
        return addmm(self.c, v, self.W).sigmoid_()

    def p_v(self, h: Tensor) -> Tensor:
        """P(v_i = 1 | h), (n, n_visible)."""
        return addmm(self.b, h, self.W.T).sigmoid_()

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -b'v - sum_j softplus(c_j + v'W_j), so p(v) = exp(-F(v)) / Z; (n,).

        Computed in the dtype of v (pass float64 for likelihoods)."""
        W, b, c = self.W.to(v.dtype), self.b.to(v.dtype), self.c.to(v.dtype)
        return -(v @ b) - F.softplus(v @ W + c).sum(1)

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | Uniforms) -> Tensor:
        """``steps`` rounds of block Gibbs sampling v -> h -> v."""
        for _ in range(steps):
            v = bernoulli(self.p_v(bernoulli(self.p_h(v), generator)), generator)
        return v

    # --- training ------------------------------------------------------------------------
    def pcd_chains(self, x: Tensor, steps: int,
                   generator: torch.Generator | Uniforms) -> Tensor:
        """PCD's negative samples v (n_chains, d): the persistent chains moved ``steps`` Gibbs
        steps h -> v -> h on from their kept hidden states (buffer ``hidden_chains``), whose
        last hidden draw is made (with the parameters before the update) in :meth:`fit_step`,
        as scikit-learn's BernoulliRBM does: 2 products per step instead of 2 + 1.  On the
        first update the chains start at h ~ P(h | v), v drawn from the base rate."""
        h = self.hidden_chains
        if self.base_rate.first_batch:
            v = self.chain_start(h.shape[0], generator)
            h = bernoulli(self.p_h(v), generator)
        for step in range(steps):
            v = bernoulli(self.p_v(h), generator)
            if step + 1 < steps:
                h = bernoulli(self.p_h(v), generator)
        return v

    def update_uniforms(self, n: int) -> Uniforms:
        """The :class:`~gm.ops.Uniforms` of the updates on n examples (kept per n, device and
        dtype; the first PCD update, which also starts the chains, gets its own)."""
        if self.base_rate.first_batch and self.config.persistent:
            return Uniforms()
        key = (n, self.W.device, self.W.dtype)
        if key not in self._update_uniforms:
            self._update_uniforms[key] = Uniforms()
        return self._update_uniforms[key]

    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        """One CD-k or PCD-k update on x (n, d): 5 products for CD-1 and 6 for PCD-1 (which
        adds the reconstruction its progress curve reports).  Every uniform of the update is
        drawn by one call (:class:`~gm.ops.Uniforms`: on the CPU the same draws, in the same
        order, as one call per sample)."""
        cfg = self.config
        self.observe(x)
        u = self.update_uniforms(x.shape[0]).start(generator)
        ph_data = self.p_h(x)
        pv_recon = self.p_v(bernoulli(ph_data, u))   # P(v | h), h ~ P(h | data)
        if cfg.persistent:
            v_neg = self.pcd_chains(x, cfg.cd_k, u)
        else:  # CD-k: the reconstruction is the chain's first half-step
            v_neg = self.gibbs(bernoulli(pv_recon, u), cfg.cd_k - 1, u)
        ph_neg = self.p_h(v_neg)
        if cfg.persistent:   # into the buffer: u's samples are overwritten by the next update
            bernoulli(ph_neg, u, out=self.hidden_chains)
        recon_error = float(torch.dist(x, pv_recon)) ** 2 / x.shape[0]
        # gradient of the negative log-likelihood, descended by the optimiser
        self.W.grad = moment_difference(v_neg, ph_neg, x, ph_data)
        self.b.grad = v_neg.mean(0).sub_(x.mean(0))
        self.c.grad = ph_neg.mean(0).sub_(ph_data.mean(0))
        self.optimizers()["sgd"].step()
        return {"recon_error": recon_error}

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def log_f(self, x: Tensor, budget: Budget) -> Tensor:
        """-F(x) in float64, (n,) (h sums out analytically)."""
        return -self.free_energy(x.double())

    @torch.no_grad()
    def exact_log_z(self, budget: Budget) -> float | None:
        """Exact log Z by enumerating the smaller layer (the other is summed analytically)."""
        if min(self.config.n_hidden, self.data_dim) > budget.exact_max_bits:
            return None
        W, b, c = self.W.double(), self.b.double(), self.c.double()
        if self.config.n_hidden <= self.data_dim:
            log_f = lambda h: h @ c + F.softplus(h @ W.T + b).sum(1)  # noqa: E731
            n_bits = self.config.n_hidden
        else:
            log_f = lambda v: v @ b + F.softplus(v @ W + c).sum(1)  # noqa: E731
            n_bits = self.data_dim
        return float(enumerate_log_z(log_f, n_bits, max_bits=budget.exact_max_bits,
                                     device=W.device))

    def annealing_path(self) -> "RBMAnnealingPath":
        return RBMAnnealingPath(self)


class RBMAnnealingPath(BaseRatePath):
    """p_beta(v) ∝ exp((1-beta) b_A'v + beta b'v) prod_j (1 + exp(beta (c_j + v'W_j))).

    beta = 0 is the base-rate model with biases b_A = logit(data mean) and no interactions,
    whose Z_0 = 2^n_hidden prod_i (1 + exp(b_A,i)) (Salakhutdinov & Murray 2008, eq. 14-16).

    The log-weights are float64 (v W + c in float64); the transitions run in the parameters'
    own dtype (float32 as trained: half the cost of the float64 product h W', uniforms and
    sigmoids), which leave p_beta invariant up to that dtype's rounding of the conditionals.
    """

    def __init__(self, rbm: RBM):
        super().__init__(rbm.base_rate_logits())
        self.W, self.b, self.c = (t.detach().double() for t in (rbm.W, rbm.b, rbm.c))
        self.db = self.b - self.b_a          # (d,): the visible biases' path is b_A + beta db
        # the transitions' copies in the parameters' dtype: W (d, H), b_A and db (d,)
        self.W_t = rbm.W.detach().clone()
        self.b_a_t, self.db_t = self.b_a.to(self.W_t.dtype), self.db.to(self.W_t.dtype)

    def base_log_z(self) -> float:
        return float(self.c.numel() * math.log(2.0) + F.softplus(self.b_a).sum())

    def log_f(self, v: Tensor, beta: float) -> Tensor:
        return v @ (self.b_a + beta * self.db) + F.softplus(beta * (v @ self.W + self.c)).sum(1)

    def transition(self, v: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        return self._move(torch.addmm(self.c, v, self.W), beta, generator)

    def _move(self, act: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        """v -> h -> v' at beta, given the hidden activations act = v W + c (M, H) float64;
        computed in the dtype of W_t, v' returned in float64 (M, d)."""
        h = bernoulli(act.to(self.W_t.dtype, copy=True).mul_(beta).sigmoid_(), generator)
        pv = addmm(torch.add(self.b_a_t, self.db_t, alpha=beta), h.mul_(beta), self.W_t.T)
        return bernoulli(pv.sigmoid_(), generator).double()

    def ais_step(self, v: Tensor, beta_prev: float, beta: float, generator: torch.Generator,
                 move: bool = True) -> tuple[Tensor, Tensor]:
        """log_f(v, beta) - log_f(v, beta_prev) and the transition at beta, with one v W."""
        act = torch.addmm(self.c, v, self.W)
        delta = (F.softplus(act * beta) - F.softplus(act * beta_prev)).sum(1)
        delta = torch.addmv(delta, v, self.db, alpha=beta - beta_prev)
        return delta, self._move(act, beta, generator) if move else v
