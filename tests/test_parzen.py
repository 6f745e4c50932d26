"""Parzen window against scipy's Gaussian KDE at the same bandwidth, the bandwidth search, and
the cross-fit fallback for every batch size."""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde

from gm.base import Budget, GenerativeModel
from gm.errors import ConfigError
from gm.estimators.parzen import (DEFAULT_GRID, ParzenProxy, parzen_log_likelihood,
                                  select_bandwidth)


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


class GaussianSampler(ParzenProxy, GenerativeModel):
    """A real ParzenProxy host without training: its samples are N(0, I) in d dimensions."""

    def __init__(self, d: int):
        super().__init__(d, None)
        self.init_parzen_sigma()

    def sample(self, n, *, generator):
        return torch.randn(n, self.data_dim, generator=generator, dtype=torch.float64)


# rows 0 and 2 inside the sample cloud, row 1 far from it: the best widths of the halves differ
EXAMPLES = torch.tensor([[0.1, -0.2], [3.0, 3.5], [-0.3, 0.4]], dtype=torch.float64)
BUDGET = Budget(parzen_samples=200)


def test_cross_fit_fallback_refuses_one_example_and_names_the_fix():
    """n = 1 with no validation-chosen width and no parzen_sigma: no cross-fit is possible
    (sigma would be chosen on the example itself), so a ConfigError names the field and both
    fixes; with either fix the example is scored.  Fails on a crash (the old empty second
    half) or if sigma is silently fitted on the example."""
    model = GaussianSampler(2)
    x = EXAMPLES[:1]
    with pytest.raises(ConfigError) as err:
        model.log_likelihood(x, generator=torch.Generator().manual_seed(0), budget=BUDGET)
    assert err.value.field == "parzen_sigma" and "prepare_evaluation" in str(err.value)
    fixed = model.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                                 budget=dataclasses.replace(BUDGET, parzen_sigma=0.5))
    centers = model.sample(200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fixed.values, parzen_log_likelihood(x, centers, 0.5))
    assert fixed.info["sigma_from_validation"] == 0.0
    model.prepare_evaluation(EXAMPLES[1:], generator=torch.Generator().manual_seed(1),
                             budget=BUDGET)
    chosen = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), budget=BUDGET)
    assert chosen.info["sigma_from_validation"] == 1.0 and chosen.values.shape == (1,)


@pytest.mark.parametrize("n", [2, 3])
def test_cross_fit_fallback_never_chooses_sigma_on_the_example_itself(n):
    """n = 2, 3: the even rows are scored at the width chosen on the odd rows and vice versa
    (two-fold cross-fitting), checked against select_bandwidth on each half; the examples are
    chosen so that fitting a half on itself would give another width.  Fails if any row's
    width is chosen on data that include it."""
    model = GaussianSampler(2)
    x = EXAMPLES[:n]
    ll = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), budget=BUDGET)
    centers = model.sample(200, generator=torch.Generator().manual_seed(0))
    even, odd = torch.arange(0, n, 2), torch.arange(1, n, 2)
    for rows, other, name in ((even, odd, "even"), (odd, even, "odd")):
        sigma, _ = select_bandwidth(x[other], centers)
        own, _ = select_bandwidth(x[rows], centers)
        assert ll.info[f"sigma_{name}_rows"] == sigma != own, (name, sigma, own)
        assert torch.equal(ll.values[rows], parzen_log_likelihood(x[rows], centers, sigma))
    assert ll.kind == "proxy" and ll.info["sigma_from_validation"] == 0.0
