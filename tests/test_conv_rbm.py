"""Convolutional RBM with probabilistic max-pooling: free energy, pooling, exact and AIS."""
import itertools

import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError
from gm.estimators.exact import binary_states


def tiny(data_dim=9, seed=0, scale=1.0, **kw):
    """A conv RBM with random (not small) weights, so every term matters."""
    torch.manual_seed(seed)
    kw = {"n_filters": 2, "filter_size": 2, "pool": 2, **kw}
    m = gm.build("conv_rbm", data_dim, **kw)
    with torch.no_grad():
        m.W.normal_(0, scale)
        m.b.normal_(0, scale)
        m.c.normal_(0, scale)
    return m


def joint_energy(m, v, h):
    """E(v, h) for flat images v (n, H*W) and hidden maps h (n, K, Hh, Wh), from the
    definition (a direct sum, no pooling algebra)."""
    inp = m.hidden_input(v)
    return -(h * inp).flatten(1).sum(1) - v @ m.visible_bias()


def test_free_energy_matches_joint_enumeration_with_pooling_constraint():
    # 3x3 image, two 2x2 filters -> two 2x2 hidden maps = one 2x2 pooling block each
    m = tiny()
    v = binary_states(9)                                     # (512, 9)
    allowed = [h for h in itertools.product([0, 1], repeat=8)
               if sum(h[:4]) <= 1 and sum(h[4:]) <= 1]       # at most one unit on per block
    assert len(allowed) == 25
    hs = torch.tensor(allowed, dtype=torch.float32).reshape(-1, 2, 2, 2)
    with torch.no_grad():
        e = torch.stack([joint_energy(m, v, h.expand(len(v), -1, -1, -1)) for h in hs], 1)
        want = torch.logsumexp(-e.double(), 1)
        got = -m.free_energy(v).double()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(m.neg_free_energy(v), want, atol=1e-4, rtol=1e-5)


def test_pool_one_is_a_plain_conv_rbm():
    # without pooling every hidden unit is independent: F = -c'v - sum softplus(I)
    m = tiny(data_dim=16, filter_size=3, pool=1)
    v = binary_states(16)[::97]
    with torch.no_grad():
        want = -(v @ m.visible_bias()) - torch.nn.functional.softplus(m.hidden_input(v)).flatten(1).sum(1)
        torch.testing.assert_close(m.free_energy(v), want)


def blocks_of(a, pool):
    """(n, K, Hh, Wh) hidden maps -> (n, K, Hh/C, Wh/C, C*C): each pooling block's units."""
    n, k, hh, wh = a.shape
    return (a.reshape(n, k, hh // pool, pool, wh // pool, pool).permute(0, 1, 2, 4, 3, 5)
            .reshape(n, k, hh // pool, wh // pool, pool * pool))


def test_block_log_partition_is_log_one_plus_block_sum():
    m = tiny(data_dim=36, filter_size=3, pool=2)
    inp = 5 * torch.randn(7, m.config.n_filters, 4, 4, dtype=torch.float64)
    want = torch.log1p(blocks_of(inp, 2).exp().sum(-1))
    torch.testing.assert_close(m.block_log_partition(inp), want)


def test_hidden_sampler_follows_block_softmax_and_constraint():
    m = tiny(data_dim=16, filter_size=3, pool=2)
    v = binary_states(16)[1234:1235]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        inp = m.hidden_input(v).expand(20000, -1, -1, -1)
        h, pooled = m.sample_hidden(inp, g)
        probs = torch.softmax(torch.nn.functional.pad(blocks_of(inp[:1], 2), (1, 0)), -1)[0]
    blocks = blocks_of(h, 2)                                 # (n, K, 1, 1, 4)
    assert blocks.sum(-1).max() <= 1                         # at most one unit per block
    torch.testing.assert_close(pooled, blocks.sum(-1))
    freq = blocks.mean(0)                                    # (K, 1, 1, 4)
    se = (probs[..., 1:] * (1 - probs[..., 1:]) / 20000).sqrt()
    assert ((freq - probs[..., 1:]).abs() <= 5 * se + 1e-3).all()


def test_exact_log_likelihood_normalises():
    m = tiny()
    ll = m.log_likelihood(binary_states(9), generator=torch.Generator(), budget=Budget())
    assert ll.kind == "exact" and ll.method == "exact"
    assert abs(float(torch.logsumexp(ll.values, 0))) < 1e-9


def test_ais_agrees_with_exact_on_4x4_conv_rbm():
    # 4x4 image (2^16 states enumerated), 3 filters 3x3 -> 2x2 maps -> one block per filter
    m = tiny(data_dim=16, n_filters=3, filter_size=3, pool=2, scale=0.7, seed=1)
    x = binary_states(16)[::331]
    exact = m.exact_log_z(Budget())
    budget = Budget(ais_chains=200, ais_betas=300, raise_chains=1)
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(0), budget=budget)
    ais = est["ais"]
    assert ais.kind == "estimate" and ais.method == "ais"
    # tolerance: 4 delta-method stderrs plus 0.02 nats of AIS bias
    assert abs(ais.info["log_z"] - exact) < 4 * ais.info["log_z_stderr"] + 0.02
    ll = m.log_likelihood(x, generator=torch.Generator(), budget=budget)
    torch.testing.assert_close(ais.values, ll.values + exact - ais.info["log_z"])
    # the RAISE / AIS sandwich of the mean contains the exact mean (the bounds hold in
    # expectation; 0.03 nats allows for the noise of one RAISE chain per example)
    assert est["raise"].kind == "estimate"
    assert ais.bounds["lower"].mean() <= ll.mean + 0.03
    assert ais.bounds["upper"].mean() >= ll.mean - 0.03
    assert abs(ais.info["sandwich_gap"]) < 0.1


def test_ais_used_when_image_too_large_to_enumerate():
    m = tiny(data_dim=64, filter_size=3, pool=2)
    ll = m.log_likelihood(torch.zeros(3, 64), generator=torch.Generator().manual_seed(0),
                          budget=Budget(ais_chains=10, ais_betas=20, raise_chains=1))
    assert ll.method == "ais" and ll.kind == "estimate" and ll.shared_stderr > 0
    assert set(ll.bounds) == {"lower", "upper"}


def test_training_on_bars_and_stripes_raises_exact_log_likelihood():
    from gm.data import dataset_spec
    s = dataset_spec("bars_stripes").prepare(None)
    x = torch.tensor(s.x["train"])
    torch.manual_seed(0)
    m = gm.build("conv_rbm", 16, n_filters=16, filter_size=3, pool=1)
    g = torch.Generator().manual_seed(0)
    before = m.log_likelihood(torch.tensor(s.x["test"]), generator=g, budget=Budget()).mean
    for _ in range(15):
        for i in range(0, len(x), 50):
            m.fit_step(x[i:i + 50], generator=g)
    after = m.log_likelihood(torch.tensor(s.x["test"]), generator=g, budget=Budget()).mean
    assert after > before + 1.0, (before, after)           # measured: -11.09 -> about -8.5
    assert m.sample(5, generator=g).shape == (5, 16)


def test_extras_and_28x28_shapes():
    m = gm.build("conv_rbm", 28 * 28, n_filters=4, filter_size=7, pool=2, n_chains=8,
                 sample_steps=3)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 784, generator=g) < 0.2).float()
    m.fit_step(x, generator=g)
    assert m.sample(2, generator=g).shape == (2, 784)
    filters = m.extras(x, generator=g, budget=Budget()).images["filters"]
    assert filters.shape == (4, 784) and 0 <= filters.min() and filters.max() <= 1


@pytest.mark.parametrize("kw,field", [({"filter_size": 4}, "filter_size"),
                                      ({"image_shape": [4, 8]}, "image_shape"),
                                      ({"pool": 0}, "pool"),
                                      ({"kernel": 3}, "kernel")])
def test_bad_configs_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        gm.build("conv_rbm", 64, **kw)
