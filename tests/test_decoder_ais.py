"""Decoder AIS (Wu et al. 2017) against the closed-form marginal of a linear-Gaussian generator.

Tolerance: with 16 chains, 300 sigmoid-spaced betas and 5 leapfrog steps, the mean error over
20 examples is within 0.1 nats and every example within 0.75 nats (per-example AIS stderr is
about 0.1-0.4 nats here).
"""
import torch

from gm.estimators.decoder_ais import (decoder_ais_log_likelihood, gaussian_observation,
                                       linear_gaussian_log_marginal)


def linear_model(seed, d=5, k=2, std=0.5, n=20):
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(d, k, generator=g), 0.1 * torch.randn(d, generator=g)
    x = torch.randn(n, k, generator=g) @ W.T + b + std * torch.randn(n, d, generator=g)
    return W, b, std, x


def test_matches_closed_form_of_linear_gaussian_generator():
    W, b, std, x = linear_model(0)
    exact = linear_gaussian_log_marginal(x, W, b, std)
    est, stderr, acc = decoder_ais_log_likelihood(
        x, gaussian_observation(lambda z: z @ W.T + b, std), 2,
        generator=torch.Generator().manual_seed(1), chains=16, betas=300, leapfrog=5)
    err = est - exact
    assert abs(float(err.mean())) < 0.1, err
    assert float(err.abs().max()) < 0.75, err
    assert 0.3 < acc < 0.95 and torch.all(stderr < 1.0)


def test_exact_when_the_decoder_ignores_z():
    # posterior = prior: every AIS weight equals p(x) exactly, whatever the schedule
    W, b, std, x = linear_model(2)
    exact = linear_gaussian_log_marginal(x, torch.zeros_like(W), b, std)
    est, stderr, _ = decoder_ais_log_likelihood(
        x, gaussian_observation(lambda z: b + 0 * z[:, :1], std), 2,
        generator=torch.Generator().manual_seed(0), chains=3, betas=5, leapfrog=2)
    assert torch.allclose(est, exact, atol=1e-6) and torch.all(stderr < 1e-6)


def test_closed_form_is_a_normalised_density():
    # 1-D data, 1-D latent: integrate exp(log p(x)) over x numerically
    W, b = torch.tensor([[1.3]]), torch.tensor([0.2])
    xs = torch.linspace(-12, 12, 6001).unsqueeze(1)
    dens = linear_gaussian_log_marginal(xs, W, b, 0.4).exp()
    assert abs(float(torch.trapezoid(dens, xs[:, 0].double())) - 1) < 1e-6
