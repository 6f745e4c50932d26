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

Training is CD-k or PCD like :class:`~gm.models.rbm.RBM`: the gradient of log p(v) is
-dF(v_data)/dtheta + dF(v_model)/dtheta with the free energy F below, taken by autograd.

log p(v) = -F(v) - log Z is a density in nats.  The free energy sums h out:
F(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + (v/sigma^2)'W_j).
v integrates out analytically for each h (a Gaussian), so
log Z = logsumexp_h [c'h + sum_i ((b + W h)_i^2 - b_i^2) / (2 sigma_i^2)]
        + sum_i log sqrt(2 pi sigma_i^2),
exact by enumerating h when n_hidden <= exact_max_bits; else forward AIS (interactions W and
hidden biases c scaled by beta, from N(b, sigma^2) x uniform h) with a RAISE sandwich.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.base import Budget, GenerativeModel, LogLikelihood
from gm.config import require
from gm.estimators.ais import ais_log_z, beta_schedule
from gm.estimators.exact import enumerate_log_z
from gm.estimators.raise_ais import ais_sandwich, raise_log_likelihood, sandwich_estimates
from gm.models.rbm import RBMConfig
from gm.ops import bernoulli
from gm.registry import register

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class GRBMConfig(RBMConfig):
    lr: float = 0.005
    persistent: bool = True       # PCD: negative chains carried across updates
    sigma_lr_scale: float = 0.1   # lr of log sigma^2 relative to lr (Cho et al. 2011, sec. 4)
    learn_sigma: bool = True
    min_sigma: float = 0.01       # floor of sigma in data units (digits' quantisation noise ~0.017)
    min_scale: float = 0.1        # floor of the standardising scale in data units

    def __post_init__(self):
        super().__post_init__()
        require(self.sigma_lr_scale >= 0, "sigma_lr_scale",
                f"must be >= 0, got {self.sigma_lr_scale}")
        require(self.min_sigma > 0, "min_sigma", f"must be > 0, got {self.min_sigma}")
        require(self.min_scale > 0, "min_scale", f"must be > 0, got {self.min_scale}")


@register("grbm")
class GaussianRBM(GenerativeModel):
    """W (n_visible, n_hidden), b (n_visible,), c (n_hidden,), log_var z (n_visible,), all in
    the standardised space v = (x - shift) / scale (fixed buffers, (n_visible,))."""

    Config = GRBMConfig
    input_kind = "real"

    def __init__(self, data_dim: int, config: GRBMConfig):
        super().__init__(data_dim, config)
        self.W = nn.Parameter(config.init_std * torch.randn(data_dim, config.n_hidden))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.c = nn.Parameter(torch.zeros(config.n_hidden))
        self.log_var = nn.Parameter(torch.zeros(data_dim), requires_grad=config.learn_sigma)
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))
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
        cfg = self.config
        groups = [{"params": [self.W, self.b, self.c]}]
        if cfg.learn_sigma:   # no weight decay on the variances
            groups.append({"params": [self.log_var], "lr": cfg.lr * cfg.sigma_lr_scale,
                           "weight_decay": 0.0})
        return {"sgd": torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    @torch.no_grad()
    def _init_from_data(self, x: Tensor) -> None:
        """Fix the standardisation from the first minibatch; b = 0, sigma = 1 there."""
        self.shift.copy_(x.mean(0))
        if x.shape[0] > 1:
            self.scale.copy_(x.std(0).clamp_min(self.config.min_scale))

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        if self.data_count == 0:
            self._init_from_data(x)
        self.data_count += x.shape[0]
        x = self.standardise(x)
        with torch.no_grad():
            if cfg.persistent:
                if self.data_count == x.shape[0]:  # first update: chains from N(b, sigma^2)
                    self.chains.copy_(self.sample_v(torch.zeros(
                        cfg.n_chains, cfg.n_hidden, device=x.device), generator))
                v_neg = self.gibbs(self.chains, cfg.cd_k, generator)
                self.chains.copy_(v_neg)
            else:
                v_neg = self.gibbs(x, cfg.cd_k, generator)
        self.optimizers()["sgd"].zero_grad(set_to_none=True)
        with torch.enable_grad():  # descending F(data) - F(model) ascends log p (CD / PCD)
            gap = self.free_energy(x).mean() - self.free_energy(v_neg).mean()
            gap.backward()
        self.optimizers()["sgd"].step()
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
        v = self.sample_v(torch.zeros(n, self.config.n_hidden, device=self.b.device), generator)
        v = self.gibbs(v, self.config.sample_steps - 1, generator)
        mean = self.mean_v(bernoulli(self.p_h(v), generator))
        return (self.shift + self.scale * mean).clamp(0, 1)

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def log_z_exact(self, max_bits: int = 20) -> float:
        """Exact log Z (of the density of the standardised v): enumerate h, integrate v
        analytically (a Gaussian for each h)."""
        W, b, c, var = self.W.double(), self.b.double(), self.c.double(), self._var(torch.float64)

        def log_f(h):
            m = h @ W.T + b
            return h @ c + ((m ** 2 - b ** 2) / (2 * var)).sum(1)

        log_z = enumerate_log_z(log_f, self.config.n_hidden, max_bits=max_bits, device=W.device)
        return float(log_z + 0.5 * (LOG_2PI + var.log()).sum())

    def annealing_path(self) -> "GRBMAnnealingPath":
        return GRBMAnnealingPath(self)

    @torch.no_grad()
    def ais_sandwich(self, x: Tensor, budget: Budget, generator: torch.Generator) -> LogLikelihood:
        """Forward AIS estimate of log p(x) with the bounds {"lower": RAISE, "upper": AIS}."""
        path = self.annealing_path()
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        res = ais_log_z(path, betas, budget.ais_chains, generator, desc="AIS grbm")
        v = self.standardise(x.double())
        start = lambda u, g: (u, path.log_f(u, 1.0))  # noqa: E731
        lower = raise_log_likelihood(path, start, v, self.config.raise_chains, betas,
                                     generator, desc="RAISE grbm") - self.log_det_scale()
        return ais_sandwich(self.log_f(x), res, lower, info={
            "ais_chains": budget.ais_chains, "ais_betas": budget.ais_betas,
            "raise_chains": self.config.raise_chains})

    @torch.no_grad()
    def log_f(self, x: Tensor) -> Tensor:
        """Unnormalised log density of data x (n, d): -F(v) - sum_i log scale_i, float64 (n,)."""
        return -self.free_energy(self.standardise(x.double())) - self.log_det_scale()

    def _exact_ok(self, budget: Budget) -> bool:
        return self.config.n_hidden <= budget.exact_max_bits

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        if self._exact_ok(budget):
            log_z = self.log_z_exact(budget.exact_max_bits)
            return LogLikelihood(self.log_f(x) - log_z, "exact", "exact", info={"log_z": log_z})
        return self.ais_sandwich(x, budget, generator)

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        """Beside an exact log p(x): AIS (RAISE/AIS sandwich in ``bounds``) and RAISE alone."""
        if not self._exact_ok(budget):
            return {}
        return sandwich_estimates(self.ais_sandwich(x, budget, generator))


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
