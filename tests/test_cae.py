"""Contractive autoencoder: Jacobian penalty in closed form, tangent-plane sampler."""
import pytest
import torch

import gm
from gm.base import Budget
from gm.errors import ConfigError


def build(**kw):
    torch.manual_seed(0)
    return gm.build("cae", 10, **({"n_hidden": 7, "sample_steps": 5} | kw))


def test_jacobian_matches_autograd_and_penalty_is_its_frobenius_norm():
    model = build()
    x = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    J = model.jacobian(x)
    for i in range(3):
        auto = torch.autograd.functional.jacobian(model.encode, x[i:i + 1])[0, :, 0, :]
        assert torch.allclose(J[i], auto, atol=1e-6)
    assert torch.allclose(model.jacobian_penalty(model.encode(x)), (J ** 2).sum((1, 2)), rtol=1e-5)


def test_chain_step_moves_along_the_tangent_plane():
    """h' - h = J J' eps: the code moves by J applied to an input step in J's row space."""
    model = build()
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(1))
    quiet = build(sample_noise=0.0)
    quiet.load_state_dict(model.state_dict())
    x_next, _ = quiet.chain_step(x, torch.Generator().manual_seed(0))
    recon = torch.sigmoid(model.decode_logits(model.encode(x)))
    assert torch.allclose(x_next, recon)                   # no noise: plain reconstruction
    x_noisy, _ = model.chain_step(x, torch.Generator().manual_seed(0))
    J = model.jacobian(x)
    eps = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    h = model.encode(x) + torch.einsum("nhd,nd->nh", J, torch.einsum("nhd,nh->nd", J, eps))
    assert torch.allclose(x_noisy, torch.sigmoid(model.decode_logits(h)), atol=1e-6)


def test_contraction_shrinks_the_jacobian():
    x = (torch.rand(256, 10, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    norms = {}
    for lam in (0.0, 3.0):
        model = build(contraction=lam, lr=1e-2)
        gen = torch.Generator().manual_seed(3)
        for _ in range(100):
            m = model.fit_step(x, generator=gen)
        norms[lam] = m["jacobian_norm2"]
    assert norms[3.0] < 0.5 * norms[0.0]


def test_sample_extras_and_proxy():
    model = build()
    s = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, 10) and s.min() >= 0 and s.max() <= 1
    assert torch.equal(s, model.sample(6, generator=torch.Generator().manual_seed(0)))
    x = (torch.rand(20, 10, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    ll = model.log_likelihood(x, generator=torch.Generator().manual_seed(0),
                              budget=Budget(parzen_samples=300))
    assert ll.kind == "proxy" and ll.method == "parzen" and ll.values.shape == (20,)
    ex = model.extras(x, generator=torch.Generator().manual_seed(0), budget=Budget())
    assert ex.images["chain"].shape == (100, 10) and len(ex.tables["chain_length"]) == 6


@pytest.mark.parametrize("bad", [{"contraction": -1.0}, {"n_hidden": 0}, {"sample_noise": -0.1}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        gm.build("cae", 10, **bad)
