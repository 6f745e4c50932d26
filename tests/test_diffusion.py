"""Binary diffusion: kernel algebra, the bound below the exact log-likelihood, bars and stripes."""
import pytest
import torch

import gm
from gm.base import Budget
from gm.data.bars_stripes import optimum_log_likelihood, patterns
from gm.errors import ConfigError
from gm.estimators.exact import binary_states


def build(d, **kw):
    torch.manual_seed(0)
    return gm.build("diffusion", d, **kw)


def test_marginal_and_posterior_match_the_one_step_kernel():
    """q(x_t | x_0) by composing the kernels, and Bayes' rule for q(x_{t-1} | x_t, x_0)."""
    model = build(1, n_steps=5)
    for x0 in (0.0, 1.0):
        p1 = torch.tensor(x0, dtype=torch.float64)              # P(x_t = 1 | x_0), t = 0
        for t in range(1, 6):
            b = float(model.beta(torch.tensor(t)))
            prev = p1
            p1 = (1 - b) * prev + b / 2
            tt = torch.tensor([t])
            assert torch.allclose(model.q_xt_given_x0(torch.tensor([[x0]]), tt).double(), p1)
            for xt in (0.0, 1.0):
                like = lambda b_: (1 - b) * (xt == b_) + b / 2  # noqa: E731
                w1, w0 = like(1.0) * prev, like(0.0) * (1 - prev)
                got = model.posterior(torch.tensor([[xt]]), torch.tensor([[x0]]), tt)
                assert torch.allclose(got.double(), w1 / (w1 + w0), atol=1e-6)
    assert float(model.alphabar[-1]) == 0.0                    # x_T uniform: no prior term


def exact_log_p(model, d):
    """log p(x_0) for every x_0 in {0,1}^d by summing the reverse chain over all states."""
    states = binary_states(d)                                  # (2^d, d)
    p = torch.full((2**d,), 2.0**-d, dtype=torch.float64)
    for step in range(model.config.n_steps, 0, -1):
        probs = model.p_prev(states, torch.full((2**d,), step)).double()   # (from, d)
        trans = (states.double().unsqueeze(0) * probs.unsqueeze(1)
                 + (1 - states.double().unsqueeze(0)) * (1 - probs.unsqueeze(1))).prod(2)
        p = p @ trans                                          # (to,)
    return p.log(), states


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_bound_is_below_the_exact_log_likelihood(ema_decay):
    """After training, the evaluated model (eval mode: the weight average when kept) has a
    Monte Carlo bound below its exact log p(x_0)."""
    d = 4
    model = build(d, n_steps=4, n_hidden=32, lr=1e-2, ema_decay=ema_decay)
    x = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        model.fit_step(x[torch.randint(0, 3, (32,), generator=gen)], generator=gen)
    model.eval()
    with torch.no_grad():
        log_p, states = exact_log_p(model, d)
        assert abs(float(log_p.exp().sum()) - 1) < 1e-9
        idx = (x @ (2 ** torch.arange(d)).float()).long()
        ll = model.log_likelihood(x, generator=gen, budget=Budget(bound_samples=400))
    assert ll.kind == "lower_bound" and ll.info["bound_samples"] == 400
    # each value is a mean over 400 draws per term; allow Monte Carlo noise of a few hundredths
    assert (ll.values <= log_p[idx] + 0.05).all(), (ll.values, log_p[idx])
    assert (ll.values >= log_p[idx] - 1.0).all()               # and a trained bound is not loose


def exact_bound(model, x0):
    """The variational bound of log p(x0) (n,) without Monte Carlo: each term's expectation
    over x_t ~ q(x_t | x_0) summed over all 2^d states x_t (float64 weights)."""
    n, d = x0.shape
    states = binary_states(d)
    total = torch.zeros(n, dtype=torch.float64)
    for step in range(1, model.config.n_steps + 1):
        t = torch.full((n,), step)
        p1 = model.q_xt_given_x0(x0, t).double()                         # (n, d)
        for xt in states:
            w = (xt * p1 + (1 - xt) * (1 - p1)).prod(1)                 # q(x_t | x_0), (n,)
            total -= w * model.term_given(x0, xt.expand(n, d), t).double()
    return total


def confident(model, logit):
    """Make the x0-predictor output ``logit`` for every pixel, whatever x_t and t."""
    with torch.no_grad():
        last = model.net.body[-1]
        last.weight.zero_()
        last.bias.fill_(logit)
    return model


@pytest.mark.parametrize("d,T", [(2, 1), (3, 2), (4, 3)])
def test_exact_bound_never_exceeds_exact_log_likelihood(d, T):
    """On tiny models (all x_0, every x_t enumerated, no Monte Carlo) the bound is below the
    exact log p(x_0) of the model the sampler draws from, for random predictors with
    confident outputs and for a predictor that is certain (logit 40: sigmoid = 1.0 in float32)
    of the wrong pixel values.  Before the fix the bound clamped probabilities the sampler did
    not: for d = 3, T = 2 it reported -49.5 nats for x_0 = 0 where the sampler's log p(x_0 = 0)
    was -inf (and up to 10.9 nats above a finite exact value for a random d = 2 model); now
    the sampler draws from the same floored probabilities, log p(x_0 = 0) = -47.8.  The
    1e-5 nats allow float32 rounding of the terms.  Fails if the bound scores other
    probabilities than the sampler draws from."""
    states = binary_states(d)
    for seed in range(3):
        model = build(d, n_steps=T, n_hidden=8)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 3.0)
        with torch.no_grad():
            log_p, _ = exact_log_p(model, d)
            bound = exact_bound(model, states)
        assert abs(float(log_p.exp().sum()) - 1) < 1e-9
        assert (bound <= log_p + 1e-5).all(), (seed, bound - log_p)
    model = confident(build(d, n_steps=T, n_hidden=8), 40.0)
    with torch.no_grad():
        assert float(model.x0_probs(states, torch.full((2**d,), 1)).min()) == 1.0
        log_p, _ = exact_log_p(model, d)
        bound = exact_bound(model, states)
    assert torch.isfinite(log_p).all() and abs(float(log_p.exp().sum()) - 1) < 1e-9
    assert (bound <= log_p + 1e-5).all(), bound - log_p
    assert float(log_p[0]) < -15 * d               # x_0 = 0: every pixel disagrees


def test_importance_weighted_bound_closes_the_gap_to_the_exact_log_likelihood():
    """On a random tiny model whose variational bound is loose by 3-19 nats: the weights of
    forward trajectories are unbiased for p(x_0) (mean weight / exact p within 4 standard
    errors of 1), their logs average to the bound (exact_bound), and the importance-weighted
    bound over 4,000 trajectories closes most of the gap to the exact log p(x_0) (Burda et al.
    2016, theorem 1) without passing it by more than its Monte Carlo noise (measured: at most
    0.14 nats).  Fails if a weight misses a transition of p or of q, or counts one twice."""
    d, T, m = 3, 3, 20000
    model = build(d, n_steps=T, n_hidden=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 2.0)
        states = binary_states(d)
        log_p, _ = exact_log_p(model, d)
        bound = exact_bound(model, states)
        gen = torch.Generator().manual_seed(0)
        log_w = model.log_weights(states, m, gen)                        # (m, 2^d)
        ll = model.log_likelihood(states, generator=gen,
                                  budget=Budget(trajectory_samples=4000))
    gap = log_p - bound
    assert log_w.shape == (m, 2**d) and float(gap.min()) > 3.0, gap
    ratio = (log_w - log_p).exp()                                        # w / p(x_0)
    assert ((ratio.mean(0) - 1).abs() <= 4 * ratio.std(0) / m**0.5).all(), ratio.mean(0)
    assert ((log_w.mean(0) - bound).abs() <= 4 * log_w.std(0) / m**0.5).all()
    assert ll.method == "diffusion_iw" and ll.kind == "lower_bound"
    assert ll.info["trajectory_samples"] == 4000
    assert (ll.values <= log_p + 0.25).all(), ll.values - log_p
    assert (ll.values - bound >= 0.9 * gap).all(), ((ll.values - bound) / gap)


def test_zero_trajectories_is_the_variational_bound():
    """trajectory_samples 0 scores with the closed-form-KL bound, with no second estimate."""
    model = build(4, n_steps=3, n_hidden=8).eval()
    x = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.float32)
    budget = Budget(bound_samples=8)
    ll = model.log_likelihood(x, generator=torch.Generator().manual_seed(0), budget=budget)
    assert ll.method == "diffusion_elbo" and ll.info["bound_samples"] == 8
    assert not model.per_example_cost(budget)
    assert model.validation_estimates(x, generator=torch.Generator(), budget=budget) == {}
    budget = Budget(bound_samples=8, trajectory_samples=5)
    assert model.per_example_cost(budget)
    est = model.validation_estimates(x, generator=torch.Generator().manual_seed(0), budget=budget)
    assert est["elbo"].method == "diffusion_elbo" and torch.equal(est["elbo"].values, ll.values)


def test_sampler_draws_from_the_scored_model():
    """Frequencies of 40,000 samples match exp(exact log p) (computed from ``p_prev``, which
    the bound scores) to within sampling noise: total variation below 0.015."""
    d = 3
    model = build(d, n_steps=3, n_hidden=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 2.0)
        log_p, _ = exact_log_p(model, d)
        s = model.sample(40000, generator=torch.Generator().manual_seed(0))
    idx = (s @ (2 ** torch.arange(d)).float()).long()
    freq = torch.bincount(idx, minlength=2**d).double() / len(idx)
    assert 0.5 * float((freq - log_p.exp()).abs().sum()) < 0.015


def bars_bound(model, gen):
    x = torch.tensor(patterns())
    with torch.no_grad():
        return model.log_likelihood(x, generator=gen, budget=Budget(bound_samples=50))


def train_bars(model, steps, gen):
    from gm.data import dataset_spec
    xtr = torch.tensor(dataset_spec("bars_stripes").prepare(None).x["train"])
    for _ in range(steps):
        model.fit_step(xtr[torch.randint(0, len(xtr), (100,), generator=gen)], generator=gen)


def check_bars(steps, gap, **kw):
    """The mean bound over the 30 patterns never exceeds -log 30 (their mean log p is at most
    log of their mean p, at most -log 30) and rises towards it with training."""
    model = build(16, **kw)
    gen = torch.Generator().manual_seed(0)
    opt = optimum_log_likelihood()
    history = [bars_bound(model, gen)]
    for _ in range(3):
        train_bars(model, steps // 3, gen)
        history.append(bars_bound(model, gen))
    means = [h.mean for h in history]
    for m in means:       # 0.05 nats: Monte Carlo noise of 50 draws per term and pattern
        assert m <= opt + 0.05, (means, opt)
    assert means[-1] > means[0] + 5
    assert means[-1] > opt - gap, (means, opt)


def test_bars_stripes_bound_approaches_optimum_fast():
    check_bars(300, gap=3.0, n_steps=10, n_hidden=128)


@pytest.mark.slow
def test_bars_stripes_bound_approaches_optimum():
    check_bars(6000, gap=1.0, n_steps=20, n_hidden=256)   # reached -4.08 vs -3.40 (gap 0.68)


def test_samples_binary_and_reproducible():
    model = build(16, n_steps=5)
    a = model.sample(8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (8, 16) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, model.sample(8, generator=torch.Generator().manual_seed(1)))
    ex = model.extras(a, generator=torch.Generator().manual_seed(2), budget=Budget())
    assert ex.images["chain"].shape == (110, 16) and len(ex.tables["bound_terms"]) == 5


def test_eval_mode_uses_the_weight_average_and_it_is_saved():
    """With ema_decay > 0, train mode predicts with the trained weights and eval mode with
    their bias-corrected average (not the same predictions); a model loaded from the state
    dict predicts the same in eval mode; with ema_decay = 0 both modes agree."""
    d = 5
    x = (torch.rand(64, d, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    xt, t = x[:8], torch.arange(1, 9) % 4 + 1
    for decay in (0.0, 0.95):
        model = build(d, n_steps=4, n_hidden=16, lr=1e-2, ema_decay=decay)
        gen = torch.Generator().manual_seed(0)
        for _ in range(30):
            model.fit_step(x, generator=gen)
        with torch.no_grad():
            trained = model.train().x0_probs(xt, t)
            evaluated = model.eval().x0_probs(xt, t)
            copy = build(d, n_steps=4, n_hidden=16, ema_decay=decay)
            copy.load_state_dict(model.state_dict())
            loaded = copy.eval().x0_probs(xt, t)
        torch.testing.assert_close(loaded, evaluated, rtol=0, atol=0)
        if decay == 0:
            torch.testing.assert_close(evaluated, trained, rtol=0, atol=0)
        else:
            assert model.average is not None and int(model.average.steps) == 30
            assert (evaluated - trained).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [{"n_steps": 0}, {"n_layers": 0}, {"lr": 0.0},
                                 {"ema_decay": 1.0}, {"ema_decay": -0.1},
                                 {"eval_samples": 4}])   # an evaluation setting: the budget's
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        gm.build("diffusion", 6, **bad)
