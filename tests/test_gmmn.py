"""GMMN: the MMD with a mixture of bandwidths, training in data and code space."""
import pytest
import torch

import gm
from gm.errors import ConfigError
from gm.models.directed.gmmn import mmd_squared


def test_mmd_matches_a_direct_double_sum():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g) + 1
    widths = (0.5, 2.0)

    def k(a, b):
        return sum(torch.exp(-((a - b) ** 2).sum() / (2 * s**2)) for s in widths)

    kxx = sum(k(a, b) for a in x for b in x) / 25
    kyy = sum(k(a, b) for a in y for b in y) / 49
    kxy = sum(k(a, b) for a in x for b in y) / 35
    assert torch.allclose(mmd_squared(x, y, widths), kxx + kyy - 2 * kxy, atol=1e-5)
    assert abs(float(mmd_squared(x, x, widths))) < 1e-6
    assert float(mmd_squared(x, y, widths)) > 0


def test_training_matches_a_two_cluster_distribution():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.1, 0.9]])
    x = centers[torch.randint(0, 2, (200,), generator=g)]
    torch.manual_seed(0)
    m = gm.build("gmmn", 4, latent_dim=2, hidden=[32], bandwidths=[0.25, 0.5, 1.0], lr=3e-3)
    first = [m.fit_step(x, generator=g)["mmd"] for _ in range(5)]
    for _ in range(300):
        last = m.fit_step(x, generator=g)["mmd"]
    assert last < 0.5 * sum(first) / 5
    s = m.sample(400, generator=g)
    nearest = torch.cdist(s, centers).argmin(1)
    assert 0.3 < float(nearest.float().mean()) < 0.7   # both modes covered


def test_gmmn_ae_trains_the_autoencoder_first():
    torch.manual_seed(0)
    m = gm.build("gmmn", 16, space="code", code_dim=4, ae_epochs=2, latent_dim=3)
    x = (torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    g = torch.Generator().manual_seed(1)
    keys = []
    for epoch in range(4):
        keys.append(set(m.fit_step(x, generator=g)))
        m.end_epoch(epoch)
    assert keys == [{"ae_loss"}, {"ae_loss"}, {"mmd"}, {"mmd"}]
    assert set(m.optimizers()) == {"gmmn", "autoencoder"}
    s = m.sample(5, generator=g)
    assert s.shape == (5, 16) and s.min() >= 0 and s.max() <= 1


def test_config_errors():
    with pytest.raises(ConfigError, match="bandwidths"):
        gm.build("gmmn", 4, bandwidths=[])
    with pytest.raises(ConfigError, match="space"):
        gm.build("gmmn", 4, space="latent")

