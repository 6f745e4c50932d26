"""Variational autoencoder (book section 20.10.3; Kingma & Welling 2014, Rezende et al. 2014)
and its importance-weighted objective (IWAE, Burda et al. 2016).

z ~ N(0, I), x | z ~ Bernoulli(sigmoid(g(z))) (``vae``, binary data) or
N(sigmoid(g(z)), diag(sigma^2)) with a learned per-pixel sigma (``vae_gaussian``, real data).
q(z | x) = N(mu(x), diag(s(x)^2)).  Training maximises the k-sample bound
log (1/k) sum_i p(x, z_i) / q(z_i | x) with reparameterised z_i (section 20.9): k = 1 is the
ELBO of the VAE, k > 1 the IWAE.  log p(x) is reported as the importance-sampling bound with
q as proposal (``budget.importance_samples`` samples), a stochastic lower bound; decoder AIS
(Wu et al. 2017) runs beside it as a tighter check (budget ``decoder_ais_*``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.optim import Adam
from gm.base import Budget, Curve, GenerativeModel, LogLikelihood
from gm.config import Checked, ranged
from gm.estimators.decoder_ais import decoder_ais_estimate
from gm.estimators.importance import importance_log_likelihood, iwae_bound
from gm.nets import mlp
from gm.ops import bernoulli
from gm.registry import register
from gm.stochastic_grad import reparameterized_normal

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class VAEConfig(Checked):
    latent_dim: int = ranged(8, ge=1)
    hidden: tuple[int, ...] = ranged((128,), ge=1, each=True)
    iwae_k: int = ranged(1, ge=1)      # samples of the training bound: 1 = VAE (ELBO), > 1 = IWAE
    lr: float = ranged(1e-3, gt=0)
    min_std: float = ranged(0.01, gt=0)  # floor of the Gaussian decoder's per-pixel std
                                         # (vae_gaussian)


def normal_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, diag(exp(log_std)^2)) summed over the last axis."""
    return (-0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last axis."""
    return (x * logits - F.softplus(logits)).sum(-1)


@register("vae")
class VAE(GenerativeModel):
    """VAE with a Bernoulli decoder; encoder and decoder are MLPs of widths ``hidden``."""

    Config = VAEConfig
    progress = Curve("bound", "training ELBO (IWAE bound when iwae_k > 1)", "nats per image", True)
    input_kind = "binary"

    def __init__(self, data_dim: int, config: VAEConfig):
        super().__init__(data_dim, config)
        k, h = config.latent_dim, list(config.hidden)
        self.encoder = mlp([data_dim, *h, 2 * k])
        self.decoder = mlp([k, *h[::-1], data_dim])

    # --- the two halves --------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x): mean and log std, each (..., latent_dim)."""
        mean, log_std = self.encoder(x).chunk(2, -1)
        return mean, log_std.clamp(-7, 5)

    def log_lik(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for x (..., d), z (..., latent_dim) broadcastable; (...)."""
        return bernoulli_log_prob(x, self.decoder(z))

    def log_prior(self, z: Tensor) -> Tensor:
        return normal_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k reparameterised z_i ~ q(. | x); (k, n)."""
        mean, log_std = self.encode(x)
        z = reparameterized_normal(mean.expand(k, *mean.shape), log_std, generator)
        return self.log_lik(x, z) + self.log_prior(z) - normal_log_prob(z, mean, log_std)

    # --- training ------------------------------------------------------------------------
    def make_optimizers(self):
        return {"adam": Adam(self.parameters(), lr=self.config.lr)}

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        bound = iwae_bound(self.log_weights(x, self.config.iwae_k, generator)).mean()
        self.optimizers()["adam"].zero_grad()
        (-bound).backward()
        self.optimizers()["adam"].step()
        return {"bound": float(bound.detach())}

    # --- sampling ------------------------------------------------------------------------
    def decode_sample(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """x ~ p(x | z), (n, d)."""
        return bernoulli(torch.sigmoid(self.decoder(z)), generator)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return self.decode_sample(z, generator)

    # --- likelihood ----------------------------------------------------------------------
    def _bound(self, x: Tensor, k: int, generator: torch.Generator) -> LogLikelihood:
        values = importance_log_likelihood(
            x, lambda xb, m: self.log_weights(xb, m, generator), k)
        return LogLikelihood(values, "iwae" if k > 1 else "elbo", "lower_bound",
                             info={"importance_samples": k})

    def per_example_cost(self, budget: Budget) -> bool:
        return True                     # importance sampling, k samples per example

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        return self._bound(x, budget.importance_samples, generator)

    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        """The ELBO and decoder AIS (budget ``decoder_ais_*``), both lower bounds."""
        ais = decoder_ais_estimate(x, self.log_lik, self.config.latent_dim,
                                   generator=generator, budget=budget, kind="lower_bound")
        return {"elbo": self._bound(x, 1, generator), "decoder_ais": ais}


@register("vae_gaussian")
class GaussianVAE(VAE):
    """VAE with a Gaussian decoder N(sigmoid(g(z)), diag(sigma^2)) for real-valued data."""

    input_kind = "real"

    def __init__(self, data_dim: int, config: VAEConfig):
        super().__init__(data_dim, config)
        self.log_std = nn.Parameter(torch.full((data_dim,), math.log(0.1)))

    def _decoder_log_std(self) -> Tensor:
        return self.log_std.clamp(min=math.log(self.config.min_std))

    def log_lik(self, x: Tensor, z: Tensor) -> Tensor:
        mean = torch.sigmoid(self.decoder(z))
        return normal_log_prob(x, mean, self._decoder_log_std())

    def decode_sample(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """x ~ p(x | z), clipped to [0, 1] (the data's range) for display; (n, d)."""
        mean = torch.sigmoid(self.decoder(z))
        return reparameterized_normal(mean, self._decoder_log_std(), generator).clamp(0, 1)
