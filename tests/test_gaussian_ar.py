"""The linear Gaussian autoregressive net is a multivariate Gaussian (book 20.10.8)."""
from __future__ import annotations

import torch

import gm
from gm.base import Budget
from gm.models.autoregressive.base import allowed_dependencies, dependency_matrix



def random_model(d: int, seed: int = 0):
    torch.manual_seed(seed)
    model = gm.build("gaussian_ar", d).double()
    with torch.no_grad():
        model.W.normal_(0, 0.5)
        model.b.normal_()
        model.log_sigma.normal_(0, 0.3)
    return model


def test_log_density_equals_the_implied_multivariate_gaussian():
    model = random_model(6)
    mean, cov = model.implied_gaussian()
    x = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    expected = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    ll = model.log_likelihood(x, generator=torch.Generator(), budget=Budget())
    assert ll.kind == "exact"
    torch.testing.assert_close(ll.values, expected, rtol=1e-10, atol=1e-10)
    # and not a tautology: another Gaussian (perturbed covariance) disagrees
    other = torch.distributions.MultivariateNormal(mean, cov + 0.1 * torch.eye(6, dtype=cov.dtype))
    assert (other.log_prob(x) - expected).abs().max() > 1e-2


def test_vectorised_samples_have_the_implied_mean_and_covariance():
    model = random_model(4, seed=2)
    mean, cov = model.implied_gaussian()
    x = model.sample_unclamped(200_000, generator=torch.Generator().manual_seed(3))
    mean, cov = mean.detach(), cov.detach()
    torch.testing.assert_close(x.mean(0), mean, atol=float(0.03 * cov.diag().sqrt().max()), rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=float(0.03 * cov.abs().max()), rtol=0)
    clipped = model.sample(1000, generator=torch.Generator().manual_seed(3))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_conditional_means_are_autoregressive():
    model = random_model(7)
    dep = dependency_matrix(model.conditional_means, torch.rand(7, dtype=torch.float64))
    assert torch.equal(dep, allowed_dependencies(torch.arange(7)))


def test_training_reaches_the_maximum_likelihood_gaussian():
    """Adam on the AR likelihood converges to the closed-form MLE N(sample mean, sample cov)."""
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[1.0, 0, 0], [0.8, 0.5, 0], [-0.3, 0.4, 0.2]])
    x = torch.randn(2000, 3, generator=g) @ A.T + torch.tensor([0.5, -1.0, 2.0])
    torch.manual_seed(0)
    model = gm.build("gaussian_ar", 3, lr=0.05)
    for step in range(400):                     # full batch: no minibatch noise floor
        model.fit_step(x, generator=g)
    mle = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T, correction=0))
    with torch.no_grad():
        assert abs(float(model.log_prob(x).mean() - mle.log_prob(x).mean())) < 1e-3
