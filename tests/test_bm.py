"""Fully visible Boltzmann machine (book 20.1): exact gradient, locality of the update,
Gibbs sampler, and AIS/RAISE against exact enumeration."""

import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError
from gm.estimators.exact import binary_states
from gm.models.energy.bm import gibbs_sweep


def _bm(d, seed=0, scale=0.5, **kw):
    torch.manual_seed(seed)
    m = gm.build("bm", d, **kw)
    with torch.no_grad():
        a = torch.triu(scale * torch.randn(d, d), 1)
        m.U.copy_(a + a.T)
        m.b.normal_(0, 0.5)
    return m


def _data(n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).float()


def _step(m, x):
    """U and b after one plain gradient step (lr 1, no momentum/decay) minus before."""
    u0, b0 = m.U.detach().clone(), m.b.detach().clone()
    m.base_rate.count.fill_(1)  # skip the base-rate initialisation of b
    m.fit_step(x, generator=torch.Generator().manual_seed(0))
    return m.U.detach() - u0, m.b.detach() - b0


def test_exact_gradient_matches_autograd():
    """The exact update equals the gradient of the exact mean log-likelihood (enumeration)."""
    d = 6
    x = _data(30, d)
    m = _bm(d, lr=1.0, momentum=0.0, weight_decay=0.0)
    U = m.U.detach().double().requires_grad_()
    b = m.b.detach().double().requires_grad_()
    s = binary_states(d, dtype=torch.float64)
    log_f = lambda v: ((v @ U) * v).sum(1) + v @ b  # noqa: E731
    ll = (log_f(x.double()) - torch.logsumexp(log_f(s), 0)).mean()
    ll.backward()
    dU, db = _step(m, x)
    gU = U.grad.clone().fill_diagonal_(0)
    assert torch.allclose(dU.double(), gU, atol=1e-5)
    assert torch.allclose(db.double(), b.grad, atol=1e-5)


def test_update_of_uij_depends_only_on_xi_xj_statistics():
    """Book 20.1: the change of U_ij is E_data[x_i x_j] - E_model[x_i x_j].  Two data sets with
    the same columns 0 and 1 but different other columns give the same update of U_01 and a
    different one elsewhere."""
    d = 6
    x1 = _data(40, d)
    x2 = x1.clone()
    x2[:, 2:] = _data(40, d - 2, seed=7)
    dU1, _ = _step(_bm(d, lr=1.0, momentum=0.0, weight_decay=0.0), x1)
    dU2, _ = _step(_bm(d, lr=1.0, momentum=0.0, weight_decay=0.0), x2)
    assert torch.allclose(dU1[0, 1], dU2[0, 1], atol=1e-6) and torch.allclose(dU1, dU1.T)
    assert (dU1[2:, 2:] - dU2[2:, 2:]).abs().max() > 1e-2
    # and the same holds for the PCD update: model statistics from shared chains
    m1 = _bm(d, lr=1.0, momentum=0.0, weight_decay=0.0, gradient="pcd", n_chains=50)
    m2 = _bm(d, lr=1.0, momentum=0.0, weight_decay=0.0, gradient="pcd", n_chains=50)
    m1.chains.copy_(_data(50, d, seed=3))
    m2.chains.copy_(_data(50, d, seed=3))
    p1, _ = _step(m1, x1)
    p2, _ = _step(m2, x2)
    assert torch.allclose(p1[0, 1], p2[0, 1], atol=1e-6)
    assert torch.equal(m1.chains, m2.chains)


def test_gibbs_sweep_samples_the_model():
    """Empirical state frequencies of long Gibbs chains match exact probabilities (TV < 0.05)."""
    d = 4
    m = _bm(d, scale=1.0)
    s = binary_states(d)
    p = torch.softmax(m.neg_energy(s.double()), 0).float()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4000, d)
    for _ in range(30):
        x = gibbs_sweep(x, m.U.detach(), m.b.detach(), g)
    idx = (x * 2 ** torch.arange(d)).sum(1).long()
    freq = torch.bincount(idx, minlength=2**d).float() / x.shape[0]
    assert 0.5 * (freq - p).abs().sum() < 0.05


def test_ais_sandwich_contains_exact():
    """AIS estimate within 0.1 nats of exact, and [RAISE, AIS] contains it within 0.05."""
    d = 8
    m = _bm(d)
    x = _data(20, d)
    budget = Budget(ais_chains=50, ais_betas=100)
    exact = m.log_likelihood(x, generator=torch.Generator(), budget=budget)
    assert exact.kind == "exact"
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(0), budget=budget)
    lower, upper = (float(est["ais"].bounds[k].mean()) for k in ("lower", "upper"))
    assert lower - 0.05 <= exact.mean <= upper + 0.05, (lower, exact.mean, upper)
    assert abs(est["ais"].mean - exact.mean) < 0.1
    big = m.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                           budget=Budget(exact_max_bits=7, ais_chains=50, ais_betas=100))
    assert (big.method, big.kind) == ("ais", "estimate") and abs(big.mean - exact.mean) < 0.1


def test_training_improves_likelihood():
    d = 8
    torch.manual_seed(0)
    x = _data(200, d)
    x[:, 1] = x[:, 0]                        # a strong pairwise dependency to learn
    m = gm.build("bm", d, lr=0.2)
    g = torch.Generator().manual_seed(0)
    before = m.log_likelihood(x, generator=g, budget=Budget()).mean
    for _ in range(100):
        m.fit_step(x, generator=g)
    after = m.log_likelihood(x, generator=g, budget=Budget()).mean
    assert after > before + 0.3 and float(m.U[0, 1].detach()) > 0.5


def test_exact_statistics_match_brute_force_for_odd_d():
    """The half-by-half grid gives the same E[x x'] and E[x] as summing over all 2^d rows."""
    d = 5
    m = _bm(d, scale=1.0)
    s = binary_states(d)
    p = torch.softmax(m.neg_energy(s.double()).detach(), 0)
    xx, x = m.exact_statistics()
    sd = s.double()
    assert torch.allclose(xx.double(), (sd * p[:, None]).T @ sd, atol=1e-5)
    assert torch.allclose(x.double(), p @ sd, atol=1e-5)


def test_exact_gradient_bits_is_a_training_field():
    """The exact-gradient limit is the training field exact_gradient_bits (exact_max_bits is
    the evaluation budget's): d above it trains by PCD."""
    assert gm.build("bm", 8, exact_gradient_bits=8).exact_gradient
    assert not gm.build("bm", 8, exact_gradient_bits=7).exact_gradient
    with pytest.raises(ConfigError, match="^exact_gradient_bits: must be <= 24"):
        gm.build("bm", 8, exact_gradient_bits=25)
    with pytest.raises(ConfigError, match="^exact_max_bits: unknown key"):
        gm.build("bm", 8, exact_max_bits=8)
