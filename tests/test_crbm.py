"""Conditional RBM: windows, exact conditional likelihood vs brute force, AIS, generation."""

import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError, DataError
from gm.estimators.exact import binary_states


def tiny(d=6, n_hidden=4, order=2, seed=0, scale=1.0):
    torch.manual_seed(seed)
    m = gm.build("crbm", d, n_hidden=n_hidden, order=order, gibbs_steps=5, sample_frames=3)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, scale)
    return m


def seqs(n=5, t=6, d=6, seed=1):
    return (torch.rand(n, t, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_windows_pair_each_frame_with_its_history():
    m = tiny(order=2)
    x = seqs(n=2, t=5)
    u, v = m.windows(x)
    assert u.shape == (2 * 3, 12) and v.shape == (6, 6)
    # row 1 * 3 + 2: sequence 1, frame 4, history frames 2 and 3
    torch.testing.assert_close(v[5], x[1, 4])
    torch.testing.assert_close(u[5], torch.cat([x[1, 2], x[1, 3]]))


def brute_force_log_conditional(m, u, v):
    """log p(v | u) by enumerating every (v', h) of the conditional RBM from its energy."""
    bv, bh = m.dynamic_biases(u[None])
    vs, hs = binary_states(m.data_dim), binary_states(m.config.n_hidden)
    neg_e = (vs @ bv[0])[:, None] + (hs @ bh[0])[None] + vs @ m.W @ hs.T  # (2^d, 2^nh)
    log_z = torch.logsumexp(neg_e.double().flatten(), 0)
    idx = int((v * 2 ** torch.arange(m.data_dim)).sum())
    return float(torch.logsumexp(neg_e[idx].double(), 0) - log_z)


def test_exact_conditional_log_likelihood_matches_brute_force():
    m = tiny()
    x = seqs(n=3, t=5)
    with torch.no_grad():
        ll = m.log_likelihood(x, generator=torch.Generator(), budget=Budget())
        u, v = m.windows(x)
        want = torch.tensor([brute_force_log_conditional(m, u[i], v[i]) for i in range(len(v))])
    assert ll.kind == "exact" and ll.method == "exact"
    assert ll.info["predicted_frames_per_sequence"] == 3
    torch.testing.assert_close(ll.values, want.view(3, 3).mean(1).double(), atol=1e-4, rtol=0)


def test_float32_enumeration_matches_float64():
    m = tiny(d=100, n_hidden=10, scale=0.3)
    u = seqs(n=4, t=3, d=100)[:, :2].reshape(4, -1)
    with torch.no_grad():
        bv, bh = m.dynamic_biases(u)
        got = m.conditional_log_z(bv, bh)
        hs = binary_states(10, dtype=torch.float64)
        want = torch.logsumexp(hs @ bh.double().T + torch.nn.functional.softplus(
            (hs @ m.W.double().T)[:, None] + bv.double()).sum(-1), 0)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_conditionals_normalise_over_all_frames():
    m = tiny(d=5, n_hidden=3)
    u = seqs(n=1, t=3, d=5)[0, :2].reshape(1, -1).expand(32, -1)
    v = binary_states(5)
    x = torch.cat([u.reshape(32, 2, 5), v[:, None]], 1)      # every next frame, one history
    ll = m.log_likelihood(x, generator=torch.Generator(), budget=Budget())
    assert abs(float(torch.logsumexp(ll.values, 0))) < 1e-5


def test_ais_conditional_agrees_with_exact():
    m = tiny(d=8, n_hidden=6, scale=0.7)
    x = seqs(n=4, t=4, d=8)
    budget = Budget(ais_chains=1000, ais_betas=1000)   # validation runs 100 x 100 per conditional
    ex = m.log_likelihood(x, generator=torch.Generator(), budget=budget)
    ais = m.validation_estimates(x, generator=torch.Generator().manual_seed(0),
                                 budget=budget)["ais"]
    assert ais.kind == "estimate" and ais.method == "ais" and ais.info["ais_chains"] == 100
    # tolerance: each value averages 2 conditionals whose log Z stderr is ~info; 0.05 nats
    assert (ais.values - ex.values).abs().max() < 0.05 + 4 * ais.info["mean_log_z_stderr"]
    low = m.log_likelihood(x, generator=torch.Generator(), budget=Budget(exact_max_bits=5, ais_chains=20, ais_betas=20))
    assert low.method == "ais"


def test_training_improves_conditional_likelihood_on_bouncing_balls():
    from gm.data import dataset_spec
    s = dataset_spec("bouncing_balls").prepare(None, sizes=(60, 2, 20))
    x, xt = torch.tensor(s.x["train"]), torch.tensor(s.x["test"])
    torch.manual_seed(0)
    m = gm.build("crbm", s.data_dim, n_hidden=8, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    before = m.log_likelihood(xt, generator=g, budget=Budget()).mean
    for _ in range(10):
        for i in range(0, len(x), 20):
            m.fit_step(x[i:i + 20], generator=g)
    after = m.log_likelihood(xt, generator=g, budget=Budget()).mean
    assert after > before + 20, (before, after)           # ~ -69 -> ~ -30 nats per frame
    ex = m.extras(xt, generator=g, budget=Budget())
    assert ex.images["continuations"].shape == (2 * 6 * 20, 100)
    torch.testing.assert_close(ex.images["continuations"][:2], xt[0, :2])   # context kept
    smp = m.sample(4, generator=g)
    assert smp.shape == (4, 100) and set(smp.unique().tolist()) <= {0.0, 1.0}


def test_bad_inputs():
    m = tiny()
    with pytest.raises(DataError):
        m.fit_step(torch.zeros(4, 6), generator=torch.Generator())     # frames, not sequences
    with pytest.raises(DataError):
        m.fit_step(torch.zeros(4, 2, 6), generator=torch.Generator())  # T <= order
    with pytest.raises(ConfigError, match="order"):
        gm.build("crbm", 6, order=0)
    # a default changed by the subclass keeps the range declared on the base field
    with pytest.raises(ConfigError, match="^momentum: must be < 1, got 1.0"):
        gm.build("crbm", 6, momentum=1.0)
    with pytest.raises(ConfigError, match="^n_continuations: unknown key"):  # an evaluate: setting
        gm.build("crbm", 6, n_continuations=3)
