"""GAN and DCGAN: shapes, the two players' updates, the Parzen proxy protocol, resume."""
import math

import pytest
import torch
import torch.nn.functional as F

import gm
from gm.base import Budget
from gm.errors import ConfigError, DataError
from gm.estimators.parzen import DEFAULT_GRID, parzen_log_likelihood


def data(n=64, d=64, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


@pytest.mark.parametrize("name,d", [("gan", 64), ("dcgan", 64), ("dcgan", 16), ("gan", 16)])
def test_shapes_and_sample_range(name, d):
    torch.manual_seed(0)
    m = gm.build(name, d, latent_dim=4)
    x = data(d=d)
    metrics = m.fit_step(x, generator=torch.Generator().manual_seed(0))
    assert set(metrics) == {"loss_d", "loss_g", "d_real", "d_fake"}
    assert all(math.isfinite(v) for v in metrics.values())
    s = m.sample(7, generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, d) and s.min() >= 0 and s.max() <= 1


def test_dcgan_rejects_non_square_or_indivisible_images():
    with pytest.raises(DataError, match="^dcgan: data of dimension .*not a square"):
        gm.build("dcgan", 60)
    with pytest.raises(ConfigError, match="^upsamplings: "):   # the field, not a yaml path
        gm.build("dcgan", 36, upsamplings=2)   # side 6 is not divisible by 4
    gm.build("dcgan", 36, upsamplings=1)


def test_discriminator_learns_to_separate_data_from_a_fixed_generator():
    torch.manual_seed(0)
    m = gm.build("gan", 64, latent_dim=4, lr_g=1e-12)    # generator effectively frozen
    x = data(n=128)
    gen = torch.Generator().manual_seed(0)
    first = m.fit_step(x, generator=gen)["loss_d"]
    for _ in range(60):
        last = m.fit_step(x, generator=gen)["loss_d"]
    assert last < first - 0.3


def test_non_saturating_generator_loss_is_minus_log_d():
    logit = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(F.softplus(-logit), -torch.log(torch.sigmoid(logit)), atol=1e-6)


def test_parzen_proxy_protocol():
    torch.manual_seed(0)
    m = gm.build("gan", 16, latent_dim=4)
    gen = torch.Generator().manual_seed(0)
    x_val, x_test = data(40, 16, 1), data(30, 16, 2)
    budget = Budget(parzen_samples=500)
    cross = m.log_likelihood(x_test, generator=gen, budget=budget)   # no bandwidth fitted yet
    assert (cross.method, cross.kind) == ("parzen", "proxy")
    assert cross.info["sigma_from_validation"] == 0.0
    m.prepare_evaluation(x_val, generator=gen, budget=budget)
    sigma = float(m.parzen_sigma)
    assert sigma in DEFAULT_GRID and "parzen_sigma" in m.state_dict()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ll = m.log_likelihood(x_test, generator=g1, budget=budget)
    assert ll.kind == "proxy" and ll.info["sigma"] == sigma
    ref = parzen_log_likelihood(x_test, m.sample(500, generator=g2), sigma)
    assert torch.allclose(ll.values, ref)


def test_decoder_ais_is_labelled_a_proxy():
    torch.manual_seed(0)
    m = gm.build("gan", 16, latent_dim=2)
    est = m.validation_estimates(data(5, 16), generator=torch.Generator().manual_seed(0),
                                 budget=Budget(decoder_ais_betas=10, decoder_ais_chains=2))
    (ais,) = est.values()
    assert (ais.method, ais.kind) == ("decoder_ais", "proxy") and ais.values.shape == (5,)
    assert ais.info["obs_std"] == m.config.obs_std
    assert (ais.info["decoder_ais_betas"], ais.info["decoder_ais_chains"]) == (10, 2)


@pytest.mark.parametrize("name", ["gan", "dcgan", "gmmn", "cae", "gsn"])
def test_either_view_models_take_the_view_from_their_config(name):
    """data_view: real puts gan/dcgan/gmmn/cae/gsn on grey levels (the Parzen protocol of
    Goodfellow et al. 2014 is on real-valued MNIST); anything else is one clear error."""
    assert gm.build(name, 64).input_kind == "binary"
    m = gm.build(name, 64, data_view="real")
    assert m.input_kind == "real"
    grey = torch.rand(32, 64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    assert all(math.isfinite(v) for v in m.fit_step(grey, generator=torch.Generator()).values())
    with pytest.raises(ConfigError, match="data_view"):
        gm.build(name, 64, data_view="grey")
