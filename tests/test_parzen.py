"""Parzen window against scipy's Gaussian KDE at the same bandwidth, and the bandwidth search."""
import numpy as np
import torch
from scipy.stats import gaussian_kde

from gm.estimators.parzen import DEFAULT_GRID, parzen_log_likelihood, select_bandwidth


def whitened(n, d, seed):
    """n points whose sample covariance is exactly the identity, so that scipy's kernel
    covariance factor^2 * cov equals sigma^2 I with factor = sigma."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x -= x.mean(0)
    chol = np.linalg.cholesky(np.cov(x.T))
    return x @ np.linalg.inv(chol).T


def test_agrees_with_scipy_gaussian_kde():
    centers = whitened(300, 4, 0)
    x = np.random.default_rng(1).normal(size=(50, 4)) * 1.5
    for sigma in (0.2, 0.7, 2.0):
        kde = gaussian_kde(centers.T, bw_method=sigma)
        assert np.allclose(kde.covariance, sigma**2 * np.eye(4))
        ours = parzen_log_likelihood(torch.tensor(x), torch.tensor(centers), sigma, chunk=7)
        assert np.allclose(ours.numpy(), kde.logpdf(x.T), atol=1e-8)


def test_one_dimensional_density_integrates_to_one():
    centers = torch.tensor([[0.0], [1.0], [1.5]])
    grid = torch.linspace(-5, 7, 4001).unsqueeze(1)
    dens = parzen_log_likelihood(grid, centers, 0.3).exp()
    assert abs(float(torch.trapezoid(dens, grid[:, 0].double())) - 1) < 1e-6


def test_select_bandwidth_maximises_validation_likelihood():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(500, 3, generator=gen)
    x_val = torch.randn(200, 3, generator=gen)
    sigma, table = select_bandwidth(x_val, centers)
    assert len(table) == len(DEFAULT_GRID)
    best = max(table, key=lambda r: r["mean_log_likelihood"])
    assert sigma == best["sigma"] and sigma < DEFAULT_GRID[-1]
    # for N(0, I) data and centers, the kernel should be moderately wide
    assert 0.2 < sigma <= 1.0
