"""Linear Gaussian autoregressive network for real-valued data (book 20.10.8).

x_t = b_t + sum_{s<t} W_ts x_s + sigma_t eps_t, eps ~ N(0, I), in raster order.  Writing
L = I - W (unit lower triangular), L x = b + diag(sigma) eps, so x is multivariate Gaussian
with mean L^{-1} b and covariance L^{-1} diag(sigma^2) L^{-T}: as the book notes, the linear
continuous autoregressive net is just another parametrisation of a full-covariance Gaussian
(any ordering gives the same family, a Cholesky-like factorisation of the precision).
log p(x) is an exact density in nats on the real (dequantised) view of the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gm.base import Curve
from gm.config import ranged
from gm.models.autoregressive.base import (LOG_2PI, ARConfig, AutoregressiveModel,
                                           strictly_lower_mask)
from gm.registry import register


@dataclass(frozen=True)
class GaussianARConfig(ARConfig):
    lr: float = ranged(0.005, gt=0)


@register("gaussian_ar")
class GaussianAR(AutoregressiveModel):
    """W (d, d) strictly lower triangular, b (d,), log_sigma (d,)."""

    Config = GaussianARConfig
    progress = Curve("nll", "training negative log density", "nats per image")
    input_kind = "real"

    def __init__(self, data_dim: int, config: GaussianARConfig):
        super().__init__(data_dim, config)
        self.register_buffer("mask", strictly_lower_mask(data_dim))
        self.W = nn.Parameter(torch.zeros(data_dim, data_dim))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.log_sigma = nn.Parameter(torch.zeros(data_dim))

    def conditional_means(self, x: Tensor) -> Tensor:
        """E[x_t | x_<t] = b_t + sum_{s<t} W_ts x_s, (n, d) -> (n, d)."""
        return x @ (self.W * self.mask).T + self.b

    def log_prob(self, x: Tensor) -> Tensor:
        z = (x - self.conditional_means(x)) * torch.exp(-self.log_sigma)
        return -0.5 * (z**2).sum(1) - self.log_sigma.sum() - 0.5 * self.data_dim * LOG_2PI

    def implied_gaussian(self) -> tuple[Tensor, Tensor]:
        """The equivalent N(mean, cov): mean (d,) = L^{-1} b, cov (d, d) = L^{-1} S^2 L^{-T}."""
        L_inv = torch.linalg.inv(torch.eye(self.data_dim, device=self.W.device,
                                           dtype=self.W.dtype) - self.W * self.mask)
        return L_inv @ self.b, L_inv @ torch.diag(torch.exp(2 * self.log_sigma)) @ L_inv.T

    @torch.no_grad()
    def sample_unclamped(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Exact samples in one triangular solve (no sequential loop): x = L^{-1}(b + S eps)."""
        eps = torch.randn(n, self.data_dim, generator=generator, device=self.W.device,
                          dtype=self.W.dtype)
        rhs = (self.b + torch.exp(self.log_sigma) * eps).T                     # (d, n)
        L = torch.eye(self.data_dim, device=self.W.device, dtype=self.W.dtype) - self.W * self.mask
        return torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True).T

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Samples clipped to the data range [0, 1] for display and sample metrics."""
        return self.sample_unclamped(n, generator=generator).clamp(0, 1)

    def n_parameters(self) -> int:
        return int(self.mask.sum()) + self.b.numel() + self.log_sigma.numel()
