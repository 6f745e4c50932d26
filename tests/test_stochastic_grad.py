"""Both gradient estimators of section 20.9 against exact gradients of small expectations."""
import torch
import pytest

from gm.estimators.exact import binary_states
from gm.stochastic_grad import (RunningBaseline, leave_one_out_baseline, reparameterized_normal,
                                score_function_surrogate)

W = torch.tensor([1.5, -2.0, 0.7])


def f_discrete(z):  # (..., 3) -> (...)
    return (z @ W - 0.5) ** 2 + 5.0  # the offset is what a baseline removes


def batch_gradients(estimate, batches=40):
    """Mean and standard error of independent gradient estimates (each a 1-D tensor)."""
    g = torch.stack([estimate(i) for i in range(batches)])
    return g.mean(0), g.std(0) / batches**0.5, g.var(0).sum()


def bernoulli_estimate(theta, baseline, seed, m=500):
    gen = torch.Generator().manual_seed(seed)
    theta = theta.clone().requires_grad_(True)
    p = torch.sigmoid(theta)
    z = (torch.rand(m, 3, generator=gen) < p.detach()).float()
    log_p = (z * torch.log(p) + (1 - z) * torch.log1p(-p)).sum(1)
    f = f_discrete(z)
    b = leave_one_out_baseline(f) if baseline else 0.0
    (g,) = torch.autograd.grad(score_function_surrogate(log_p, f, b).mean(), theta)
    return g


def test_score_function_matches_exact_gradient_of_a_discrete_expectation():
    theta = torch.tensor([0.3, -0.4, 1.0], requires_grad=True)
    z = binary_states(3)
    p = torch.sigmoid(theta)
    prob = (z * p + (1 - z) * (1 - p)).prod(1)
    (exact,) = torch.autograd.grad((prob * f_discrete(z)).sum(), theta)
    for baseline in (False, True):
        mean, se, _ = batch_gradients(lambda s: bernoulli_estimate(theta.detach(), baseline, s))
        assert torch.all((mean - exact).abs() < 4 * se + 1e-3), (baseline, mean, exact, se)
    _, _, var_plain = batch_gradients(lambda s: bernoulli_estimate(theta.detach(), False, s))
    _, _, var_base = batch_gradients(lambda s: bernoulli_estimate(theta.detach(), True, s))
    assert var_base < 0.5 * var_plain  # the baseline reduces the variance


def test_both_estimators_match_exact_gradient_of_a_gaussian_expectation():
    # E_{z ~ N(mu, s^2)}[z^2] = mu^2 + s^2: gradient (2 mu, 2 s^2) w.r.t. (mu, log s)
    mu0, log_s0 = 0.7, -0.3
    exact = torch.tensor([2 * mu0, 2 * torch.exp(torch.tensor(2 * log_s0)).item()])

    def estimate(seed, kind):
        gen = torch.Generator().manual_seed(seed)
        params = torch.tensor([mu0, log_s0], requires_grad=True)
        mu, log_s = params[0], params[1]
        if kind == "reparam":
            z = reparameterized_normal(mu.expand(500), log_s, gen)
            obj = (z**2).mean()
        else:
            z = (mu + torch.exp(log_s) * torch.randn(500, generator=gen)).detach()
            log_p = -0.5 * ((z - mu) / torch.exp(log_s)) ** 2 - log_s
            f = z**2
            obj = score_function_surrogate(log_p, f, leave_one_out_baseline(f)).mean()
        (g,) = torch.autograd.grad(obj, params)
        return g

    for kind in ("reparam", "score"):
        mean, se, _ = batch_gradients(lambda s: estimate(s, kind))
        assert torch.all((mean - exact).abs() < 4 * se + 1e-3), (kind, mean, exact, se)


def test_surrogate_value_and_leave_one_out():
    f = torch.tensor([[1.0], [2.0], [6.0]])
    assert torch.allclose(leave_one_out_baseline(f), torch.tensor([[4.0], [3.5], [1.5]]))
    with pytest.raises(ValueError):
        leave_one_out_baseline(f[:1])
    log_p = torch.zeros(3, 1)
    assert torch.allclose(score_function_surrogate(log_p, f, 1.0), f)


def test_running_baseline_statistics_and_resume():
    rb = RunningBaseline(decay=0.5)
    rb.update(torch.tensor([1.0, 3.0]))          # first batch sets mean 2, var 2
    assert rb.mean.item() == pytest.approx(2.0) and rb.var.item() == pytest.approx(2.0)
    rb.update(torch.tensor([4.0, 4.0]))
    assert rb.mean.item() == pytest.approx(3.0) and rb.var.item() == pytest.approx(1.0)
    assert rb.scale.item() == pytest.approx(1.0)
    other = RunningBaseline(decay=0.5)
    other.load_state_dict(rb.state_dict())
    assert other.mean.item() == rb.mean.item() and int(other.count) == 2
