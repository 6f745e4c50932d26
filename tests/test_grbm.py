"""Gaussian-Bernoulli RBM (book 20.5): exact log Z against numeric integration over v (the
density integrates to 1 in data space), AIS/RAISE against exact, training, exact resume."""
import math

import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError
from gm.estimators.exact import binary_states


def _grbm(d, n_hidden, seed=0, scale=0.8, **kw):
    """A GRBM with random weights, biases, variances and standardisation."""
    torch.manual_seed(seed)
    m = gm.build("grbm", d, n_hidden=n_hidden, **kw)
    with torch.no_grad():
        m.W.normal_(0, scale)
        m.b.normal_(0, 0.5)
        m.c.normal_(0, 0.5)
        m.log_var.uniform_(-1.0, 0.5)
        m.shift.uniform_(0.2, 0.8)
        m.scale.uniform_(0.3, 0.6)
    return m


def test_exact_log_z_matches_numeric_integration():
    """log p(x) from the enumerated log Z integrates to 1 over x on a grid (d = 1 and 2), and
    the free energy equals -log sum_h exp(-E(v, h))."""
    for d, n_points in ((1, 20001), (2, 801)):
        m = _grbm(d, n_hidden=3, seed=d)
        axis = torch.linspace(-6.0, 7.0, n_points, dtype=torch.float64)
        grid = torch.cartesian_prod(*[axis] * d).reshape(-1, d)
        ll = m.log_likelihood(grid, generator=torch.Generator(), budget=Budget())
        assert ll.kind == "exact"
        log_cell = d * math.log(float(axis[1] - axis[0]))
        total = float(torch.logsumexp(ll.values, 0)) + log_cell
        assert abs(total) < 1e-3, total
    # free energy against an explicit sum over h of exp(-E(v, h))
    m = _grbm(2, n_hidden=3)
    v = torch.randn(5, 2, dtype=torch.float64)
    W, b, c, var = m.W.double(), m.b.double(), m.c.double(), m._var(torch.float64)
    h = binary_states(3, dtype=torch.float64)
    neg_e = (-((v[:, None] - b) ** 2 / (2 * var)).sum(-1) + (h @ c)[None]
             + ((v / var) @ W) @ h.T)
    assert torch.allclose(-m.free_energy(v), torch.logsumexp(neg_e, 1), atol=1e-10)


def test_ais_sandwich_agrees_with_exact():
    """AIS within 0.1 nats of exact, [RAISE, AIS] contains exact within 0.05 nats, and
    log_likelihood switches to the AIS estimate when the hidden layer is too big to enumerate."""
    m = _grbm(6, n_hidden=8, scale=0.5)
    x = m.sample(20, generator=torch.Generator().manual_seed(3))
    budget = Budget(ais_chains=100, ais_betas=200)
    exact = m.log_likelihood(x, generator=torch.Generator(), budget=budget)
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(0), budget=budget)
    lower, upper = (float(est["ais"].bounds[k].mean()) for k in ("lower", "upper"))
    assert lower - 0.05 <= exact.mean <= upper + 0.05, (lower, exact.mean, upper)
    assert abs(est["ais"].mean - exact.mean) < 0.1 and est["raise"].kind == "estimate"
    big = m.log_likelihood(x, generator=torch.Generator().manual_seed(1),
                           budget=Budget(exact_max_bits=7, ais_chains=100, ais_betas=200))
    assert (big.method, big.kind) == ("ais", "estimate") and abs(big.mean - exact.mean) < 0.1


def _two_cluster_data(n, d=6, seed=1):
    """Real data in [0, 1] with two correlated clusters (a diagonal Gaussian cannot fit)."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, 1, generator=g) < 0.5).float()
    x = 0.2 + 0.6 * z + 0.05 * torch.randn(n, d, generator=g)
    return x.clamp(0, 1)


def test_training_improves_likelihood():
    x = _two_cluster_data(400)
    torch.manual_seed(0)
    m = gm.build("grbm", 6, n_hidden=4, lr=0.01)
    g = torch.Generator().manual_seed(0)
    m.fit_step(x[:20], generator=g)   # fixes the standardisation; sigma = 1, no interactions yet
    with torch.no_grad():
        m.W.zero_()
        m.log_var.zero_()
    before = m.log_likelihood(x, generator=g, budget=Budget()).mean
    for _ in range(20):
        for xb in x.split(20):
            m.fit_step(xb, generator=g)
    after = m.log_likelihood(x, generator=g, budget=Budget()).mean
    assert after > before + 2.0, (before, after)
    s = m.sample(50, generator=g)
    assert s.shape == (50, 6) and 0 <= float(s.min()) and float(s.max()) <= 1


def test_config_ranges_hold_for_the_grbm_defaults():
    """lr has its own default here but the range declared on the shared field."""
    assert gm.build("grbm", 4).config.lr == 0.005
    with pytest.raises(ConfigError, match="^lr: must be > 0"):
        gm.build("grbm", 4, lr=0.0)
    with pytest.raises(ConfigError, match="^min_sigma: must be > 0"):
        gm.build("grbm", 4, min_sigma=0.0)
