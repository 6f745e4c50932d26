"""Deep GSN: state shapes, reproducibility per seed, walk-back training, chains and clamping."""
import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError


def data(n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(3, d, generator=g) < 0.5).float()
    return proto[torch.randint(0, 3, (n,), generator=g)]


def build(**kw):
    torch.manual_seed(0)
    return gm.build("gsn", 16, **({"hidden": [12, 8], "sample_steps": 5} | kw))


def test_two_layer_state_and_sample_shapes():
    model = build()
    x = data()
    state = model.start(x)
    assert [t.shape for t in state] == [(64, 16), (64, 12), (64, 8)]
    new, mean = model.update(state, torch.Generator().manual_seed(0))
    assert [t.shape for t in new] == [(64, 16), (64, 12), (64, 8)]
    assert (new[2] != 0).any(), "the top layer h_2 must be updated (the latent state of the chain)"
    s = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, 16) and s.min() >= 0 and s.max() <= 1


def test_samples_reproducible_per_seed():
    model = build()
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        model.fit_step(data(), generator=gen)
    a = model.sample(10, generator=torch.Generator().manual_seed(5))
    b = model.sample(10, generator=torch.Generator().manual_seed(5))
    c = model.sample(10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_uses_only_the_generator():
    model = build()
    torch.manual_seed(0)
    a = model.sample(4, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = model.sample(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_walkback_steps_all_penalised_and_training_helps():
    model = build(walkback=3, hidden_noise=0.1, lr=3e-3)
    x = data(256)
    gen = torch.Generator().manual_seed(3)
    first = model.fit_step(x, generator=gen)
    assert first["loss"] > first["recon_nll_step1"] + first["recon_nll_last"] - 1e-4
    for _ in range(150):
        last = model.fit_step(x, generator=gen)
    assert last["recon_nll_last"] < 0.5 * first["recon_nll_last"]


def test_extras_chain_and_inpainting():
    model = build(walkback=2, hidden_noise=0.1, lr=3e-3)
    x = data(128)
    gen = torch.Generator().manual_seed(3)
    for _ in range(100):
        model.fit_step(x, generator=gen)
    W = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    ex = model.extras(x, generator=gen, budget=Budget(), classifier=lambda v: v @ W)
    assert ex.images["chain"].shape == (100, 16)
    assert ex.images["inpainting"].shape == (30, 16)
    assert torch.equal(ex.images["inpainting"][20:, :8], x[:10, :8])
    assert {"chain_class_switches", "chain_classes_visited"} <= set(ex.metrics)
    assert ex.tables["chain_length"][-1]["steps"] == 300
    ll = model.log_likelihood(x[:5], generator=gen, budget=Budget(parzen_samples=200))
    assert ll.kind == "proxy" and ll.values.shape == (5,)


@pytest.mark.parametrize("bad", [{"hidden": []}, {"hidden": [4, 0]}, {"walkback": 0},
                                 {"input_noise": 1.0}, {"hidden_noise": -1.0}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        gm.build("gsn", 16, **bad)
