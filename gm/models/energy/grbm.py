"""Gaussian-Bernoulli RBM for real-valued data (book section 20.5; Cho, Ilin & Raiko 2011).

E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - c'h - sum_ij (v_i / sigma_i^2) W_ij h_j,

with a learned per-pixel variance sigma_i^2 = exp(z_i) in the parametrisation of Cho et al.
(2011), so p(v | h) = N(b + W h, diag(sigma^2)) and P(h_j = 1 | v) = sigmoid(c_j + (v/sigma^2)'W_j).

We do both things Hinton's guide (2010, sec. 13.2) and Cho et al. offer: the data x are first
standardised by a fixed affine map v = (x - shift) / scale, with the pixel means and standard
deviations (floored at ``min_scale``) of the first training minibatch, and the RBM then learns
sigma in the standardised space starting from 1.  Standardising keeps the gradients (which
scale as 1/sigma^2) well conditioned; learning sigma lets the near-constant border pixels of the
dequantised digits (standard deviation ~ 1/17/sqrt(12)) get a narrow density.  sigma is floored
at ``min_sigma`` in data units.  ``learn_sigma=False`` is the unit-variance GRBM on standardised
data.  log p(x) = log p(v) - sum_i log scale_i is a density of the data as given.

Training is CD-k or PCD like :class:`~gm.models.energy.rbm.RBM`: the gradient of log p(v) is
-dF(v_data)/dtheta + dF(v_model)/dtheta with the free energy F below, taken by autograd.

log p(v) = -F(v) - log Z is a density in nats.  The free energy sums h out:
F(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + (v/sigma^2)'W_j).
v integrates out analytically for each h (a Gaussian), so
log Z = logsumexp_h [c'h + sum_i ((b + W h)_i^2 - b_i^2) / (2 sigma_i^2)]
        + sum_i log sqrt(2 pi sigma_i^2),
exact by enumerating h when n_hidden <= exact_max_bits; else forward AIS (interactions W and
hidden biases c scaled by beta, from N(b, sigma^2) x uniform h) with a RAISE sandwich
(:class:`~gm.models.energy.base.EnergyModel`).  The base rate of the data only counts the
training examples here (the AIS path starts at N(b, sigma^2), not at the base-rate model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.optim import SGD
from gm.base import Budget, Curve
from gm.config import ranged
from gm.estimators.exact import enumerate_log_z
from gm.models.energy.base import EnergyModel
from gm.models.energy.rbm import RBMConfig
from gm.ops import bernoulli
from gm.registry import register

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class GRBMConfig(RBMConfig):
    lr: float = 0.005
    persistent: bool = True       # PCD: negative chains carried across updates
    sigma_lr_scale: float = ranged(0.1, ge=0)  # lr of log sigma^2 relative to lr (Cho et al.
                                               # 2011, sec. 4)
    learn_sigma: bool = True
    min_sigma: float = ranged(0.01, gt=0)   # floor of sigma in data units (digits'
                                            # quantisation noise ~0.017)
    min_scale: float = ranged(0.1, gt=0)    # floor of the standardising scale in data units


@register("grbm")
class GaussianRBM(EnergyModel):
    """W (n_visible, n_hidden), b (n_visible,), c (n_hidden,), log_var z (n_visible,), all in
    the standardised space v = (x - shift) / scale (fixed buffers, (n_visible,))."""

    Config = GRBMConfig
    progress = Curve("recon_error", "reconstruction error (CD has no tractable objective)",
                     "squared error per image")
    input_kind = "real"

    def __init__(self, data_dim: int, config: GRBMConfig):
        super().__init__(data_dim, config)
        self.W = nn.Parameter(config.init_std * torch.randn(data_dim, config.n_hidden))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.c = nn.Parameter(torch.zeros(config.n_hidden))
        self.log_var = nn.Parameter(torch.zeros(data_dim), requires_grad=config.learn_sigma)
        self.register_buffer("shift", torch.zeros(data_dim))
        self.register_buffer("scale", torch.ones(data_dim))
        self.register_buffer(  # persistent negative chains (PCD), started at the first update
            "chains", torch.zeros(config.n_chains if config.persistent else 0, data_dim))

    # --- conditionals and energies -------------------------------------------------------
    def _var(self, dtype=None) -> Tensor:
        """sigma^2 in the standardised space, (n_visible,)."""
        z = self.log_var if dtype is None else self.log_var.to(dtype)
        return torch.maximum(torch.exp(z), self._min_var().to(z.dtype))

    def _min_var(self) -> Tensor:
        return (self.config.min_sigma / self.scale) ** 2

    def standardise(self, x: Tensor) -> Tensor:
        """v = (x - shift) / scale, in the dtype of x."""
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def log_det_scale(self) -> float:
        """sum_i log scale_i: log p(x) = log p(v) - this."""
        return float(self.scale.double().log().sum())

    def p_h(self, v: Tensor) -> Tensor:
        """P(h_j = 1 | v) = sigmoid(c_j + (v / sigma^2)'W_j), (n, n_hidden)."""
        return torch.sigmoid((v / self._var()) @ self.W + self.c)

    def mean_v(self, h: Tensor) -> Tensor:
        """E[v | h] = b + W h, (n, n_visible)."""
        return h @ self.W.T + self.b

    def sample_v(self, h: Tensor, generator: torch.Generator) -> Tensor:
        """v ~ N(b + W h, diag(sigma^2)), (n, n_visible)."""
        mu = self.mean_v(h)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + self._var().sqrt() * eps

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + (v/sigma^2)'W_j), (n,).

        Computed in the dtype of v (pass float64 for likelihoods); differentiable."""
        W, b, c = self.W.to(v.dtype), self.b.to(v.dtype), self.c.to(v.dtype)
        var = self._var(v.dtype)
        return ((v - b) ** 2 / (2 * var)).sum(1) - F.softplus((v / var) @ W + c).sum(1)

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator) -> Tensor:
        """``steps`` rounds of block Gibbs sampling v -> h -> v."""
        for _ in range(steps):
            v = self.sample_v(bernoulli(self.p_h(v), generator), generator)
        return v

    # --- training ------------------------------------------------------------------------
    def make_optimizers(self):
        """SGD as every Boltzmann machine, with log sigma^2 at lr * sigma_lr_scale and no
        weight decay (Cho et al. 2011)."""
        cfg = self.config
        groups = [{"params": [self.W, self.b, self.c]}]
        if cfg.learn_sigma:
            groups.append({"params": [self.log_var], "lr": cfg.lr * cfg.sigma_lr_scale,
                           "weight_decay": 0.0})
        return {"sgd": SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Count x; the first minibatch fixes the standardisation (b = 0, sigma = 1 there)."""
        if self.base_rate.count == 0:
            self.shift.copy_(x.mean(0))
            if x.shape[0] > 1:
                self.scale.copy_(x.std(0).clamp_min(self.config.min_scale))
        self.base_rate.update(x)

    def chain_start(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws of N(b, sigma^2) (the model with h = 0), (n, n_visible)."""
        return self.sample_v(torch.zeros(n, self.config.n_hidden, device=self.b.device),
                             generator)

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        self.observe(x)
        x = self.standardise(x)
        gap = self.free_energy_update(x, generator)   # CD / PCD in the standardised space
        with torch.no_grad():
            self.log_var.copy_(self._var().log())   # apply the floor to the parameter
            recon = self.mean_v(self.p_h(x))
            return {"recon_error": float((((x - recon) * self.scale) ** 2).sum(1).mean()),
                    "free_energy_gap": float(gap),
                    "mean_sigma": float((self._var().sqrt() * self.scale).mean())}

    # --- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Gibbs chains from N(b, sigma^2); the final E[x | h] in data space, clipped to [0, 1]
        for display."""
        v = self.gibbs(self.chain_start(n, generator), self.config.sample_steps - 1, generator)
        mean = self.mean_v(bernoulli(self.p_h(v), generator))
        return (self.shift + self.scale * mean).clamp(0, 1)

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def log_f(self, x: Tensor, budget: Budget) -> Tensor:
        """Unnormalised log density of data x (n, d): -F(v) - sum_i log scale_i, float64 (n,)."""
        return -self.free_energy(self.standardise(x.double())) - self.log_det_scale()

    @torch.no_grad()
    def exact_log_z(self, budget: Budget) -> float | None:
        """Exact log Z (of the density of the standardised v): enumerate h, integrate v
        analytically (a Gaussian for each h)."""
        if self.config.n_hidden > budget.exact_max_bits:
            return None
        W, b, c, var = self.W.double(), self.b.double(), self.c.double(), self._var(torch.float64)

        def log_f(h):
            m = h @ W.T + b
            return h @ c + ((m ** 2 - b ** 2) / (2 * var)).sum(1)

        log_z = enumerate_log_z(log_f, self.config.n_hidden, max_bits=budget.exact_max_bits,
                                device=W.device)
        return float(log_z + 0.5 * (LOG_2PI + var.log()).sum())

    def annealing_path(self) -> "GRBMAnnealingPath":
        return GRBMAnnealingPath(self)

    def raise_start(self, path):
        """The chain state is the standardised v (h summed out): log w_start = log f_1(v)."""

        def start(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            v = self.standardise(x.double())
            return v, path.log_f(v, 1.0)

        return start

    @torch.no_grad()
    def raise_log_px(self, x: Tensor, budget: Budget, generator: torch.Generator) -> Tensor:
        """RAISE of the density of v, moved to data space: minus sum_i log scale_i."""
        return super().raise_log_px(x, budget, generator) - self.log_det_scale()


class GRBMAnnealingPath:
    """p_beta(v) ∝ exp(-sum_i (v_i - b_i)^2 / (2 sigma_i^2)) prod_j (1 + exp(beta a_j(v))),
    a_j(v) = c_j + (v/sigma^2)'W_j: W and c scaled by beta, h summed out.

    beta = 0 is N(b, sigma^2) times uniform h, Z_0 = 2^n_hidden prod_i sqrt(2 pi sigma_i^2).
    The state is v (not h), so RAISE can start its reverse chain at the test example.  The
    transition h | v, then v | h is data-augmentation Gibbs, reversible for p_beta."""

    def __init__(self, grbm: GaussianRBM):
        self.W, self.b, self.c = grbm.W.detach().double(), grbm.b.detach().double(), \
            grbm.c.detach().double()
        self.var = grbm._var(torch.float64).detach()

    def base_log_z(self) -> float:
        return float(self.c.numel() * math.log(2.0) + 0.5 * (LOG_2PI + self.var.log()).sum())

    def _gauss(self, mean: Tensor, generator: torch.Generator) -> Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.var.sqrt() * eps

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self._gauss(self.b.expand(n, -1), generator)

    def log_f(self, v: Tensor, beta: float) -> Tensor:
        return (-((v - self.b) ** 2 / (2 * self.var)).sum(1)
                + F.softplus(beta * ((v / self.var) @ self.W + self.c)).sum(1))

    def transition(self, v: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        h = bernoulli(torch.sigmoid(beta * ((v / self.var) @ self.W + self.c)), generator)
        return self._gauss(self.b + beta * (h @ self.W.T), generator)
