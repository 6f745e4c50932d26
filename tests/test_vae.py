"""VAE / IWAE against log p(x) by quadrature over a one-dimensional latent."""
import math

import pytest
import torch

import gm
from gm.base import Budget
from gm.data import dataset_spec
from gm.errors import ConfigError

Z = torch.linspace(-9, 9, 6001).unsqueeze(1)  # quadrature grid of the latent


def quadrature_log_likelihood(model, x):
    """log integral p(z) p(x | z) dz by the trapezoid rule on Z; (n,)."""
    with torch.no_grad():
        lj = model.log_lik(x.unsqueeze(1), Z.unsqueeze(0)) + model.log_prior(Z).unsqueeze(0)
    return torch.logsumexp(lj.double(), 1) + math.log(float(Z[1, 0] - Z[0, 0]))


def one_latent_vae(name, seed=0, d=8, **hp):
    torch.manual_seed(seed)
    m = gm.build(name, d, latent_dim=1, hidden=[16], **hp)
    with torch.no_grad():  # a sharp, non-Gaussian posterior so that k matters
        for p in m.decoder.parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, d, generator=g)
    return m, (x < 0.5).float() if name == "vae" else x


@pytest.mark.parametrize("name", ["vae", "vae_gaussian"])
def test_iwae_below_quadrature_and_rising_with_k(name):
    m, x = one_latent_vae(name)
    exact = quadrature_log_likelihood(m, x).mean()
    gen = torch.Generator().manual_seed(0)
    means = {k: torch.stack([m.log_likelihood(x, generator=gen, budget=Budget(importance_samples=k))
                             .values for _ in range(30)]).mean() for k in (1, 10, 1000)}
    assert means[1] < means[10] < means[1000] < exact + 0.01
    ll = m.log_likelihood(x, generator=gen, budget=Budget(importance_samples=1000))
    assert (ll.method, ll.kind) == ("iwae", "lower_bound")


@pytest.mark.parametrize("name", ["vae", "vae_gaussian"])
def test_decoder_ais_matches_quadrature(name):
    m, x = one_latent_vae(name, seed=1)
    exact = quadrature_log_likelihood(m, x)
    est = m.validation_estimates(x, generator=torch.Generator().manual_seed(0),
                                 budget=Budget(decoder_ais_chains=16, decoder_ais_betas=300))
    ais = est["decoder_ais"]
    assert ais.kind == "lower_bound" and est["elbo"].kind == "lower_bound"
    assert (ais.info["decoder_ais_chains"], ais.info["decoder_ais_betas"]) == (16, 300)
    assert float((ais.values - exact).abs().max()) < 0.3, (ais.values, exact)
    assert float(est["elbo"].mean) < float(exact.mean())


def test_training_raises_the_bound_on_digits():
    s = dataset_spec("digits").prepare(None)
    x = torch.as_tensor(s.x["train"][:400])
    torch.manual_seed(0)
    m = gm.build("vae", 64, iwae_k=5)
    gen = torch.Generator().manual_seed(0)
    first = [m.fit_step(x[i:i + 100], generator=gen)["bound"] for i in range(0, 400, 100)]
    for _ in range(4):
        last = [m.fit_step(x[i:i + 100], generator=gen)["bound"] for i in range(0, 400, 100)]
    assert sum(last) / 4 > sum(first) / 4 + 5


def test_samples_and_config():
    m, _ = one_latent_vae("vae")
    v = m.sample(5, generator=torch.Generator().manual_seed(0))
    assert v.shape == (5, 8) and set(v.unique().tolist()) <= {0.0, 1.0}
    mg, _ = one_latent_vae("vae_gaussian")
    r = mg.sample(5, generator=torch.Generator().manual_seed(0))
    assert r.shape == (5, 8) and r.min() >= 0 and r.max() <= 1
    assert gm.model_class("vae_gaussian").input_kind == "real"
    with pytest.raises(ConfigError, match="iwae_k"):
        gm.build("vae", 8, iwae_k=0)

