"""RAISE (reverse AIS) and the AIS sandwich against exact enumeration on small RBMs."""
import torch

import gm
from gm.base import Budget
from gm.estimators.ais import beta_schedule
from gm.estimators.raise_ais import raise_log_likelihood


def _rbm(d=10, nh=8, scale=1.0, seed=0):
    torch.manual_seed(seed)
    m = gm.build("rbm", d, n_hidden=nh)
    with torch.no_grad():
        m.W.normal_(0, scale)
        m.b.normal_(0, 1.0)
        m.c.normal_(0, 1.0)
    return m


def _data(n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.5).float()


def test_raise_exact_with_one_step_exact_sampler():
    """K = 1 with an exact-sampling transition: the RAISE weight is unbiased for p(x), so the
    mean of the weights over many chains matches exp(log p(x)) (Burda et al. 2015, eq. 9)."""
    m = _rbm(d=4, nh=3)
    x = _data(3, 4)
    exact = m.log_likelihood(x, generator=torch.Generator(), budget=Budget()).values
    path = m.annealing_path()
    from gm.estimators.exact import binary_states
    states = binary_states(4, dtype=torch.float64)
    p1 = torch.softmax(path.log_f(states, 1.0), 0)

    class ExactPath:  # transitions draw independent exact samples of p_beta (beta in {0, 1})
        base_log_z, log_f = path.base_log_z, path.log_f

        def transition(self, v, beta, g):
            p = torch.softmax(path.log_f(states, beta), 0)
            return states[torch.multinomial(p, v.shape[0], True, generator=g)]

    g = torch.Generator().manual_seed(0)
    est = raise_log_likelihood(ExactPath(), lambda v, g: (v, path.log_f(v, 1.0)), x.double(),
                               20000, torch.tensor([0.0, 1.0], dtype=torch.float64), g)
    assert p1.sum() > 0.999
    assert torch.allclose(est, exact, atol=0.03), (est, exact)


def test_sandwich_contains_exact():
    """Forward AIS (stochastic upper bound of log p) and RAISE (stochastic lower bound) bracket
    the exact mean log-likelihood to within 0.05 nats, and both agree with it to 0.1 nats."""
    m = _rbm()
    x = _data(40, 10)
    budget = Budget(ais_chains=100, ais_betas=300, raise_chains=5)
    exact = m.log_likelihood(x, generator=torch.Generator(), budget=budget)
    assert exact.kind == "exact"
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(3), budget=budget)
    ais, rai = est["ais"], est["raise"]
    assert ais.kind == "estimate" and rai.kind == "estimate"
    lower, upper = float(ais.bounds["lower"].mean()), float(ais.bounds["upper"].mean())
    assert lower - 0.05 <= exact.mean <= upper + 0.05, (lower, exact.mean, upper)
    assert abs(lower - exact.mean) < 0.1 and abs(upper - exact.mean) < 0.1
    assert abs(ais.info["sandwich_gap"] - (upper - lower)) < 1e-9


def test_short_annealing_raise_is_conservative():
    """On data drawn from the model, E[log p_ann(x)] <= E[log p(x)] (a KL divergence), so
    RAISE with very few intermediate distributions lies well below the exact value."""
    from gm.estimators.exact import binary_states
    m = _rbm(scale=2.0)
    path = m.annealing_path()
    states = binary_states(10, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = states[torch.multinomial(torch.softmax(path.log_f(states, 1.0), 0), 200, True,
                                 generator=g)]
    exact = m.log_likelihood(x, generator=g, budget=Budget()).mean
    low = raise_log_likelihood(path, lambda v, g: (v, path.log_f(v, 1.0)), x, 5,
                               beta_schedule(3, "linear"), g)
    assert float(low.mean()) < exact - 0.5, (float(low.mean()), exact)


def test_rbm_large_hidden_layer_reports_sandwich():
    """Beyond the exact budget the RBM's headline is the AIS estimate with RAISE beside it."""
    m = _rbm(d=10, nh=8)
    x = _data(20, 10)
    ll = m.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                          budget=Budget(exact_max_bits=5, ais_chains=50, ais_betas=200,
                                        raise_chains=5))
    assert (ll.method, ll.kind) == ("ais", "estimate")
    assert set(ll.bounds) == {"lower", "upper"} and ll.info["sandwich_gap"] > -0.1


def test_no_raise_chains_is_forward_ais_alone():
    """budget.raise_chains = 0: the forward-AIS estimate without bounds, the same values as the
    upper side of the sandwich (AIS runs first on the same generator)."""
    m = _rbm(d=10, nh=8)
    x = _data(20, 10)
    kw = dict(exact_max_bits=5, ais_chains=20, ais_betas=50)
    alone = m.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                             budget=Budget(raise_chains=0, **kw))
    sandwich = m.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                                budget=Budget(raise_chains=2, **kw))
    assert (alone.method, alone.kind, alone.bounds) == ("ais", "estimate", {})
    assert torch.equal(alone.values, sandwich.bounds["upper"])
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(0),
                                 budget=Budget(raise_chains=0, ais_chains=20, ais_betas=50))
    assert set(est) == {"ais"}


def _gibbs_matrix(path, states, hidden, beta):
    """(S, S) transition matrix v -> h -> v' of the RBM annealing path at beta."""
    ph = torch.sigmoid(beta * (states @ path.W + path.c))                        # (S, nh)
    a = (hidden * ph[:, None] + (1 - hidden) * (1 - ph[:, None])).prod(-1)       # (S, H)
    pv = torch.sigmoid((1 - beta) * path.b_a + beta * (path.b + hidden @ path.W.T))  # (H, d)
    b = (states * pv[:, None] + (1 - states) * (1 - pv[:, None])).prod(-1)       # (H, S)
    return a @ b


def _log_p_ann(path, states, hidden, betas):
    """Exact log p_ann(v) of the annealing model p_0 T_beta_1 ... T_beta_K over all states."""
    p = torch.softmax(path.log_f(states, 0.0), 0)
    for beta in betas[1:].tolist():
        p = p @ _gibbs_matrix(path, states, hidden, beta)
    return p.log()


def test_raise_bounds_the_annealing_model_and_can_exceed_log_p():
    """RAISE bounds log p_ann(x) of the annealing model, not log p(x) (Burda et al. 2015): on
    the 20 states least likely under a sharp RBM, short annealing keeps p_ann near the base
    rate, so RAISE lies far ABOVE the exact log p(x) (3 betas: +4.4 nats; 10 betas: +1.4),
    while it stays below the exact log p_ann(x), computed here by enumeration.  So its kind is
    "estimate": "lower_bound" would be a lie.  Fails if RAISE is labelled a lower bound, if it
    does not exceed exact log p(x) here, or if it exceeds the exact log p_ann(x)."""
    from gm.estimators.exact import binary_states
    m = _rbm(scale=2.0)
    states, hidden = binary_states(10, dtype=torch.float64), binary_states(8, dtype=torch.float64)
    path = m.annealing_path()
    log_p = m.log_likelihood(states, generator=torch.Generator(), budget=Budget()).values
    far = log_p.argsort()[:20]
    x, exact = states[far], log_p[far]
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(0),
                                 budget=Budget(ais_chains=50, ais_betas=3,
                                               ais_schedule="linear", raise_chains=50))
    rai = est["raise"]
    assert (rai.method, rai.kind) == ("raise", "estimate")
    assert rai.mean > float(exact.mean()) + 2.0, (rai.mean, float(exact.mean()))
    for k, above in ((3, 2.0), (10, 0.4)):
        betas = beta_schedule(k, "linear")
        log_p_ann = _log_p_ann(path, states, hidden, betas)
        assert abs(float(torch.logsumexp(log_p_ann, 0))) < 1e-9        # p_ann normalises
        low = raise_log_likelihood(path, lambda v, g: (v, path.log_f(v, 1.0)), x, 500, betas,
                                   torch.Generator().manual_seed(1))
        assert float(low.mean()) > float(exact.mean()) + above, (k, float(low.mean()))
        assert float(low.mean()) < float(log_p_ann[far].mean()) + 0.1, \
            (k, float(low.mean()), float(log_p_ann[far].mean()))
