"""Restricted Boltzmann machine with binary units (book section 20.2).

E(v, h) = -b'v - c'h - v'Wh.  Trained by contrastive divergence CD-k (Hinton 2002) or
persistent CD (Tieleman 2008), with momentum and L2 weight decay (Hinton 2010, "A practical
guide to training RBMs").  log p(v) is exact by enumerating the smaller layer when it is small
enough, else estimated by AIS from a base-rate model (Salakhutdinov & Murray 2008).
"""
from __future__ import annotations

import dataclasses
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
from gm.ops import bernoulli  # noqa: F401  (re-exported for models that import it from here)
from gm.registry import register


@dataclass(frozen=True)
class CDConfig:
    """Training fields of the RBM family (rbm, grbm, conv_rbm, dbn): CD-k or PCD with
    momentum and L2 weight decay (Hinton 2010), Gibbs sampling for sample()."""

    lr: float = 0.05
    cd_k: int = 1
    persistent: bool = False      # PCD: negative chains carried across updates
    n_chains: int = 100           # persistent chains (PCD only)
    momentum: float = 0.5
    weight_decay: float = 1e-4
    init_std: float = 0.01
    sample_steps: int = 1000      # Gibbs steps per sample() chain

    def __post_init__(self):
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        for name in ("cd_k", "n_chains", "sample_steps"):
            v = getattr(self, name)
            require(v >= 1, name, f"must be >= 1, got {v}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")

    def cd_fields(self) -> dict:
        """The CDConfig fields of this config, by name (e.g. for a DBN's layer RBMs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(CDConfig)}


@dataclass(frozen=True)
class RBMConfig(CDConfig):
    n_hidden: int = 16
    raise_chains: int = 5         # reverse-AIS chains per test example (RAISE sandwich)

    def __post_init__(self):
        super().__post_init__()
        require(self.n_hidden >= 1, "n_hidden", f"must be >= 1, got {self.n_hidden}")
        require(self.raise_chains >= 1, "raise_chains", f"must be >= 1, got {self.raise_chains}")


def base_rate_logit(x: Tensor) -> Tensor:
    """Logits of the clipped pixel means of a batch x (n, d) -> (d,) float64: the initial
    visible biases of Boltzmann machines (Hinton 2010, "A practical guide", sec. 8.1)."""
    p = x.double().mean(0).clamp(0.005, 0.995)
    return torch.log(p / (1 - p))


@torch.no_grad()
def observe_batch(x: Tensor, data_sum: Tensor, data_count: Tensor, visible_bias=None) -> None:
    """Add batch x (n, d) to the running data statistics of the base-rate model; on the first
    batch, start ``visible_bias`` (if given) at the base-rate logits."""
    if data_count == 0 and visible_bias is not None:
        visible_bias.copy_(base_rate_logit(x).to(visible_bias.dtype))
    data_sum += x.double().sum(0)
    data_count += x.shape[0]


def base_rate(data_sum: Tensor, data_count: Tensor) -> Tensor:
    """Clipped training-data pixel means (d,) from running sums, 0.5 before any data.

    The base-rate model of AIS (Salakhutdinov & Murray 2008, sec. 4.2) and the initial
    visible biases (Hinton 2010, sec. 8.1); clipped to [0.005, 0.995] to keep logits finite."""
    if data_count == 0:
        return torch.full_like(data_sum, 0.5)
    return (data_sum / data_count).clamp(0.005, 0.995)


@register("rbm")
class RBM(GenerativeModel):
    """Binary RBM: W (n_visible, n_hidden), b (n_visible,), c (n_hidden,)."""

    Config = RBMConfig
    input_kind = "binary"

    def __init__(self, data_dim: int, config: RBMConfig):
        super().__init__(data_dim, config)
        # initial weights come from torch's global RNG, which the pipeline seeds per run
        self.W = nn.Parameter(config.init_std * torch.randn(data_dim, config.n_hidden))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.c = nn.Parameter(torch.zeros(config.n_hidden))
        # data statistics for the AIS base-rate model (Salakhutdinov & Murray 2008, sec. 4.2)
        self.register_buffer("data_sum", torch.zeros(data_dim, dtype=torch.float64))
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer(  # persistent negative chains (PCD), started at the first update
            "chains", torch.zeros(config.n_chains if config.persistent else 0, data_dim))

    # --- conditionals and energies -------------------------------------------------------
    def p_h(self, v: Tensor) -> Tensor:
        """P(h_j = 1 | v), (n, n_hidden)."""
        return torch.sigmoid(v @ self.W + self.c)

    def p_v(self, h: Tensor) -> Tensor:
        """P(v_i = 1 | h), (n, n_visible)."""
        return torch.sigmoid(h @ self.W.T + self.b)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -b'v - sum_j softplus(c_j + v'W_j), so p(v) = exp(-F(v)) / Z; (n,).

        Computed in the dtype of v (pass float64 for likelihoods)."""
        W, b, c = self.W.to(v.dtype), self.b.to(v.dtype), self.c.to(v.dtype)
        return -(v @ b) - F.softplus(v @ W + c).sum(1)

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator) -> Tensor:
        """``steps`` rounds of block Gibbs sampling v -> h -> v."""
        for _ in range(steps):
            v = bernoulli(self.p_v(bernoulli(self.p_h(v), generator)), generator)
        return v

    # --- training ------------------------------------------------------------------------
    def make_optimizers(self):
        cfg = self.config
        return {"sgd": torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    def base_rate(self) -> Tensor:
        """Training-data pixel means, clipped to [0.005, 0.995] (n_visible,)."""
        return base_rate(self.data_sum, self.data_count).to(self.b.dtype)

    @torch.no_grad()
    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        observe_batch(x, self.data_sum, self.data_count, self.b)
        ph_data = self.p_h(x)
        pv_recon = self.p_v(bernoulli(ph_data, generator))   # P(v | h), h ~ P(h | data)
        if cfg.persistent:
            if self.data_count == x.shape[0]:  # first update: chains from the base rate
                self.chains.copy_(bernoulli(self.base_rate().expand_as(self.chains), generator))
            v_neg = self.gibbs(self.chains, cfg.cd_k, generator)
            self.chains.copy_(v_neg)
        else:  # CD-k: the reconstruction is the chain's first half-step
            v_neg = self.gibbs(bernoulli(pv_recon, generator), cfg.cd_k - 1, generator)
        ph_neg = self.p_h(v_neg)
        recon_error = float(((x - pv_recon) ** 2).sum(1).mean())  # 5 matmuls per CD-1 step
        n, m = x.shape[0], v_neg.shape[0]
        # gradient of the negative log-likelihood (descended by the optimiser)
        self.W.grad = -(x.T @ ph_data / n - v_neg.T @ ph_neg / m)
        self.b.grad = -(x.mean(0) - v_neg.mean(0))
        self.c.grad = -(ph_data.mean(0) - ph_neg.mean(0))
        self.optimizers()["sgd"].step()
        return {"recon_error": recon_error}

    # --- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        v = bernoulli(self.base_rate().expand(n, -1).contiguous(), generator)
        v = self.gibbs(v, self.config.sample_steps, generator)
        return v

    # --- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def log_z_exact(self, max_bits: int = 20) -> float:
        """Exact log Z by enumerating the smaller layer (the other is summed analytically)."""
        W, b, c = self.W.double(), self.b.double(), self.c.double()
        if self.config.n_hidden <= self.data_dim:
            log_f = lambda h: h @ c + F.softplus(h @ W.T + b).sum(1)  # noqa: E731
            n_bits = self.config.n_hidden
        else:
            log_f = lambda v: v @ b + F.softplus(v @ W + c).sum(1)  # noqa: E731
            n_bits = self.data_dim
        return float(enumerate_log_z(log_f, n_bits, max_bits=max_bits, device=W.device))

    def annealing_path(self) -> "RBMAnnealingPath":
        return RBMAnnealingPath(self, self.base_rate())

    @torch.no_grad()
    def log_z_ais(self, budget: Budget, generator: torch.Generator):
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        return ais_log_z(self.annealing_path(), betas, budget.ais_chains, generator,
                         desc="AIS rbm")

    @torch.no_grad()
    def raise_log_px(self, x: Tensor, budget: Budget, generator: torch.Generator) -> Tensor:
        """RAISE (reverse AIS) per example, (n,): a stochastic lower bound of log p_ann(x).

        The chain state is v (h summed out), so it starts at the example itself with
        log w_start = log f_1(v) = -F(v) (Burda et al. 2015)."""
        path = self.annealing_path()
        start = lambda v, g: (v, path.log_f(v, 1.0))  # noqa: E731
        betas = beta_schedule(budget.ais_betas, budget.ais_schedule)
        return raise_log_likelihood(path, start, x.double(), self.config.raise_chains, betas,
                                    generator, desc="RAISE rbm")

    @torch.no_grad()
    def ais_sandwich(self, x: Tensor, budget: Budget, generator: torch.Generator) -> LogLikelihood:
        """Forward AIS estimate of log p(x) with the bounds {"lower": RAISE, "upper": AIS}."""
        neg_f = -self.free_energy(x.double())
        res = self.log_z_ais(budget, generator)
        lower = self.raise_log_px(x, budget, generator)
        return ais_sandwich(neg_f, res, lower, info={
            "ais_chains": budget.ais_chains, "ais_betas": budget.ais_betas,
            "raise_chains": self.config.raise_chains})

    def _exact_ok(self, budget: Budget) -> bool:
        return min(self.config.n_hidden, self.data_dim) <= budget.exact_max_bits

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        if self._exact_ok(budget):
            neg_f = -self.free_energy(x.double())
            log_z = self.log_z_exact(budget.exact_max_bits)
            return LogLikelihood(neg_f - log_z, "exact", "exact", info={"log_z": log_z})
        return self.ais_sandwich(x, budget, generator)

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        """Beside an exact log p(x): the AIS estimate (with its RAISE/AIS sandwich in
        ``bounds``) and RAISE alone as a lower bound."""
        if not self._exact_ok(budget):
            return {}
        ais = self.ais_sandwich(x, budget, generator)
        return sandwich_estimates(ais)


class RBMAnnealingPath:
    """p_beta(v) ∝ exp((1-beta) b_A'v + beta b'v) prod_j (1 + exp(beta (c_j + v'W_j))).

    beta = 0 is the base-rate model with biases b_A = logit(data mean) and no interactions,
    whose Z_0 = 2^n_hidden prod_i (1 + exp(b_A,i)) (Salakhutdinov & Murray 2008, eq. 14-16).
    """

    def __init__(self, rbm: RBM, base_rate: Tensor):
        self.W, self.b, self.c = (t.detach().double() for t in (rbm.W, rbm.b, rbm.c))
        p = base_rate.double()
        self.b_a = torch.log(p / (1 - p))

    def base_log_z(self) -> float:
        return float(self.c.numel() * math.log(2.0) + F.softplus(self.b_a).sum())

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        return bernoulli(torch.sigmoid(self.b_a).expand(n, -1).contiguous(), generator)

    def log_f(self, v: Tensor, beta: float) -> Tensor:
        return (v @ ((1 - beta) * self.b_a + beta * self.b)
                + F.softplus(beta * (v @ self.W + self.c)).sum(1))

    def transition(self, v: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        return self._move(v @ self.W + self.c, beta, generator)

    def _move(self, act: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        """v -> h -> v' at beta, given the hidden activations act = v W + c (M, H)."""
        h = bernoulli(torch.sigmoid(beta * act), generator)
        return bernoulli(torch.sigmoid((1 - beta) * self.b_a + beta * (self.b + h @ self.W.T)),
                         generator)

    def ais_step(self, v: Tensor, beta_prev: float, beta: float, generator: torch.Generator,
                 move: bool = True) -> tuple[Tensor, Tensor]:
        """log_f(v, beta) - log_f(v, beta_prev) and the transition at beta, with one v W."""
        act = v @ self.W + self.c
        delta = ((beta - beta_prev) * (v @ (self.b - self.b_a))
                 + (F.softplus(beta * act) - F.softplus(beta_prev * act)).sum(1))
        return delta, self._move(act, beta, generator) if move else v
