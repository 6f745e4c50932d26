"""Frechet distance between Gaussians fitted to features (FID, Heusel et al. 2017).

d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2})
(Dowson & Landau 1982).  The plug-in estimate from finite samples is biased upwards
(roughly by tr(C)/n per set), so FIDs are comparable only at equal sample sizes.
"""
from __future__ import annotations

import torch
from torch import Tensor


def gaussian_stats(x: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of rows of x (n, d), float64.

    weights: optional multiplicities (n,) (a bootstrap replicate); the result equals that of
    the array with each row repeated ``weights[i]`` times.
    """
    x = x.double()
    w = torch.ones(len(x), dtype=x.dtype) if weights is None else weights.to(x.dtype)
    n = w.sum()
    mu = (w[:, None] * x).sum(0) / n
    xc = x - mu
    cov = (xc * w[:, None]).T @ xc / (n - 1)
    return mu, cov


def _sqrt_psd(c: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative eigenvalues -> 0)."""
    e, v = torch.linalg.eigh((c + c.T) / 2)
    return (v * e.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2)."""
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d = ((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt
    return float(d.clamp(min=0))


def fid(features_a: Tensor, features_b: Tensor, weights_a: Tensor | None = None,
        weights_b: Tensor | None = None) -> float:
    """Frechet distance between Gaussian fits to two feature sets (n, k) and (m, k)."""
    return frechet_distance(*gaussian_stats(features_a, weights_a),
                            *gaussian_stats(features_b, weights_b))
