"""AIS for decoder-based models (Wu, Burda, Salakhutdinov & Grosse 2017).

A decoder-based model draws z ~ N(0, I) and x ~ p(x | z) = obs(x; g(z)).  For each example x,
AIS anneals from the prior p(z) (beta = 0, Z_0 = 1) to the posterior
p_beta(z) ∝ p(z) p(x | z)^beta, whose normaliser at beta = 1 is p(x), with Hamiltonian Monte
Carlo transitions whose step size adapts per chain towards acceptance 0.65 (Wu et al., sec. 4).
log of the AIS estimate is a stochastic lower bound of log p(x) (Jensen; unbiased in p(x)).

Implicit models (GANs, GMMNs) get a Gaussian observation model obs = N(x; g(z), sigma^2 I)
(Wu et al. sec. 2.2): the estimate is then of that noisy model, not of the implicit one.
The chains reuse :func:`gm.estimators.ais.ais_log_z` through an :class:`AnnealingPath`.
Their budget (chains per example, intermediate distributions, leapfrog steps per HMC move) is
the evaluation budget's ``decoder_ais_*`` fields (:class:`gm.base.Budget`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from gm.base import Budget, Kind, LogLikelihood
from gm.estimators.ais import ais_log_z, beta_schedule, log_mean_exp_stderr

LogLik = Callable[[Tensor, Tensor], Tensor]  # (x (N, d), z (N, k)) -> (N,) log p(x | z)


def gaussian_observation(decode: Callable[[Tensor], Tensor], std: float) -> LogLik:
    """log N(x; decode(z), std^2 I) summed over the d dimensions, as a LogLik."""
    def log_lik(x: Tensor, z: Tensor) -> Tensor:
        mean = decode(z)
        return (-0.5 * ((x - mean) / std) ** 2).sum(1) - x.shape[1] * (
            math.log(std) + 0.5 * math.log(2 * math.pi))
    return log_lik


def linear_gaussian_log_marginal(x: Tensor, W: Tensor, b: Tensor, std: float) -> Tensor:
    """Closed form log p(x) of z ~ N(0, I_k), x = W z + b + std * eps: N(x; b, W W' + std^2 I).

    x: (n, d), W: (d, k), b: (d,).  Returns (n,) float64 (the reference for tests).
    """
    W, b, x = W.double(), b.double(), x.double()
    cov = W @ W.T + std**2 * torch.eye(W.shape[0], dtype=torch.float64, device=W.device)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


class DecoderAnnealingPath:
    """p_beta(z | x) ∝ N(z; 0, I) p(x | z)^beta for every (example, chain) pair at once.

    State z: (n * chains, k), row e * chains + c is chain c of example e.
    """

    def __init__(self, x: Tensor, log_lik: LogLik, latent_dim: int, chains: int, *,
                 leapfrog: int, step_size: float, target_accept: float = 0.65):
        self.x = x.repeat_interleave(chains, 0)
        self.log_lik, self.k, self.leapfrog = log_lik, latent_dim, leapfrog
        self.step = torch.full((self.x.shape[0], 1), step_size, device=x.device, dtype=x.dtype)
        self.target = target_accept
        self.accepted = torch.zeros((), dtype=torch.float64)
        self.moves = 0

    def base_log_z(self) -> float:
        return 0.0

    def base_sample(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.k, generator=generator, device=self.x.device, dtype=self.x.dtype)

    def log_f(self, z: Tensor, beta: float) -> Tensor:
        return -0.5 * (z**2).sum(1) + beta * self.log_lik(self.x, z)

    def _grad(self, z: Tensor, beta: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lf = self.log_f(z, beta)
            (g,) = torch.autograd.grad(lf.sum(), z)
        return lf.detach(), g

    def transition(self, z: Tensor, beta: float, generator: torch.Generator) -> Tensor:
        """One HMC move (``leapfrog`` steps) leaving p_beta invariant; adapts step sizes."""
        p0 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        lf0, g = self._grad(z, beta)
        zn, p = z, p0 + 0.5 * self.step * g
        for i in range(self.leapfrog):
            zn = zn + self.step * p
            lf1, g = self._grad(zn, beta)
            p = p + (self.step if i < self.leapfrog - 1 else 0.5 * self.step) * g
        log_accept = (lf1 - 0.5 * (p**2).sum(1)) - (lf0 - 0.5 * (p0**2).sum(1))
        u = torch.rand(z.shape[0], generator=generator, device=z.device, dtype=z.dtype)
        accept = (torch.log(u) < log_accept) & torch.isfinite(log_accept)
        self.step = self.step * torch.exp(0.1 * (accept.to(z.dtype) - self.target)).unsqueeze(1)
        self.accepted += accept.double().mean().cpu()
        self.moves += 1
        return torch.where(accept.unsqueeze(1), zn, z)


@torch.no_grad()
def decoder_ais_log_likelihood(x: Tensor, log_lik: LogLik, latent_dim: int, *,
                               generator: torch.Generator, chains: int = 16, betas: int = 500,
                               schedule: str = "sigmoid", leapfrog: int = 10,
                               step_size: float = 0.05) -> tuple[Tensor, Tensor, float]:
    """Per-example AIS estimate of log p(x) for a decoder model with prior N(0, I_latent_dim).

    x: (n, d) data; log_lik(x, z) -> (N,) log p(x | z) for x, z of N rows.
    Returns (log p-hat (n,) float64, per-example delta-method stderr (n,), mean acceptance).
    """
    path = DecoderAnnealingPath(x, log_lik, latent_dim, chains, leapfrog=leapfrog,
                                step_size=step_size)
    res = ais_log_z(path, beta_schedule(betas, schedule), x.shape[0] * chains, generator,
                    desc="decoder AIS")
    log_w = res.log_weights.reshape(x.shape[0], chains)
    est = [log_mean_exp_stderr(row) for row in log_w]
    values = torch.tensor([v for v, _ in est], dtype=torch.float64)
    stderr = torch.tensor([s for _, s in est], dtype=torch.float64)
    return values, stderr, float(path.accepted) / max(path.moves, 1)


@torch.no_grad()
def decoder_ais_estimate(x: Tensor, log_lik: LogLik, latent_dim: int, *,
                         generator: torch.Generator, budget: Budget, kind: Kind,
                         info: dict | None = None) -> LogLikelihood:
    """:func:`decoder_ais_log_likelihood` at the budget's ``decoder_ais_chains``,
    ``decoder_ais_betas``, ``decoder_ais_leapfrog`` and ``ais_schedule``, as a LogLikelihood
    (method "decoder_ais", the given kind) whose info records that budget, the mean HMC
    acceptance and the mean per-example stderr, plus ``info``."""
    values, stderr, acc = decoder_ais_log_likelihood(
        x, log_lik, latent_dim, generator=generator, chains=budget.decoder_ais_chains,
        betas=budget.decoder_ais_betas, schedule=budget.ais_schedule,
        leapfrog=budget.decoder_ais_leapfrog)
    return LogLikelihood(values, "decoder_ais", kind, info=(info or {}) | {
        "decoder_ais_chains": budget.decoder_ais_chains,
        "decoder_ais_betas": budget.decoder_ais_betas,
        "decoder_ais_leapfrog": budget.decoder_ais_leapfrog,
        "hmc_acceptance": acc, "mean_example_stderr": float(stderr.mean())})
