"""Sigmoid belief net: exact enumeration, IWAE bound ordering, both training methods."""
import pytest
import torch

import gm
from gm.base import Budget
from gm.data import dataset_spec
from gm.errors import ConfigError
from gm.estimators.exact import binary_states


def small_sbn(seed=0, hidden=(3, 2), d=6):
    torch.manual_seed(seed)
    m = gm.build("sbn", d, hidden=list(hidden))
    with torch.no_grad():  # make the posterior far from factorial
        for p in m.parameters():
            p.mul_(4.0)
    return m


def test_exact_likelihood_is_normalised():
    m = small_sbn()
    x = binary_states(6)
    lp = m.log_likelihood(x, generator=torch.Generator(), budget=Budget())
    assert lp.kind == "exact"
    assert abs(float(torch.logsumexp(lp.values, 0))) < 1e-5


def test_iwae_bound_below_exact_and_rising_with_k():
    m = small_sbn(1)
    x = binary_states(6)[::5]
    exact = m.log_likelihood_exact(x)
    gen = torch.Generator().manual_seed(0)
    means = {}
    for k in (1, 5, 50):
        runs = [m._importance(x, k, gen).values for _ in range(40)]
        means[k] = torch.stack(runs).mean(0).mean()
        assert runs[0].shape == exact.shape
    assert means[1] < means[5] < means[50] < exact.mean()
    assert float(exact.mean() - means[50]) < float(exact.mean() - means[1]) / 3


def test_importance_bound_used_when_too_many_bits():
    m = small_sbn()
    x = binary_states(6)[:4]
    ll = m.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                          budget=Budget(exact_max_bits=4, importance_samples=20))
    assert (ll.method, ll.kind) == ("iwae", "lower_bound")
    with pytest.raises(ConfigError, match="^exact_max_bits: "):   # the field, not a yaml path
        m.log_likelihood_exact(x, max_bits=4)


@pytest.mark.parametrize("method", ["nvil", "wake_sleep"])
def test_training_raises_exact_likelihood_on_bars_and_stripes(method):
    s = dataset_spec("bars_stripes").prepare(None)
    x = torch.as_tensor(s.x["train"])
    torch.manual_seed(0)
    m = gm.build("sbn", 16, hidden=[8], method=method, lr=0.03)
    gen = torch.Generator().manual_seed(0)
    before = m.log_likelihood_exact(x).mean()
    for _ in range(8):
        for i in range(0, len(x), 25):
            metrics = m.fit_step(x[i:i + 25], generator=gen)
    after = m.log_likelihood_exact(x).mean()
    assert after > before + 1.0, (before, after)
    assert "elbo" in metrics


def test_samples_are_binary_and_config_checked():
    m = small_sbn()
    v = m.sample(7, generator=torch.Generator().manual_seed(0))
    assert v.shape == (7, 6) and set(v.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="^method: "):
        gm.build("sbn", 6, method="reinforce")
    with pytest.raises(ConfigError, match="hidden"):
        gm.build("sbn", 6, hidden=[])

