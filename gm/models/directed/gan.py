"""Generative adversarial network (book section 20.10.4; Goodfellow et al. 2014).

Generator x = g(z) = sigmoid(G(z)), z ~ N(0, I); discriminator D(x) = sigmoid(d(x)).
The discriminator ascends log D(x) + log(1 - D(g(z))); the generator uses the
non-saturating loss -log D(g(z)) (book eq. 20.81 and the heuristic after it).  Both players
are MLPs here; :mod:`gm.models.directed.dcgan` swaps in convolutional ones.  Evaluation: see
:mod:`gm.models.directed.base` (Parzen proxy, decoder AIS).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gm.optim import Adam
from gm.base import Curve
from gm.config import ranged
from gm.models.directed.base import ImplicitConfig, ImplicitGenerator
from gm.nets import mlp
from gm.registry import register


@dataclass(frozen=True)
class GANConfig(ImplicitConfig):
    hidden: tuple[int, ...] = ranged((128,), ge=1, each=True)  # widths of both MLPs (the
                                                               # discriminator's reversed)
    lr_g: float = ranged(1e-3, gt=0)
    lr_d: float = ranged(1e-3, gt=0)
    beta1: float = ranged(0.5, ge=0, lt=1)  # Adam's first-moment decay (Radford et al. 2016)
    d_steps: int = ranged(1, ge=1)          # discriminator updates per generator update


@register("gan")
class GAN(ImplicitGenerator):
    """GAN with MLP players: ``gen`` (latent -> d logits), ``disc`` (d -> 1 logit)."""

    Config = GANConfig
    progress = Curve("loss_d",
                     "discriminator loss (log 4 = 1.39 at equilibrium; not sample quality)",
                     "nats", True)

    def __init__(self, data_dim: int, config: GANConfig):
        super().__init__(data_dim, config)
        self.gen, self.disc = self.build_players(data_dim, config)

    def build_players(self, data_dim: int, config: GANConfig) -> tuple[nn.Module, nn.Module]:
        """(generator: (n, latent) -> (n, d) logits, discriminator: (n, d) -> (n, 1) logit)."""
        h = list(config.hidden)
        return (mlp([config.latent_dim, *h, data_dim]),
                mlp([data_dim, *h[::-1], 1], lambda: nn.LeakyReLU(0.2)))

    def generate(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.gen(z))

    def make_optimizers(self):
        cfg, betas = self.config, (self.config.beta1, 0.999)
        return {"generator": Adam(self.gen.parameters(), lr=cfg.lr_g, betas=betas),
                "discriminator": Adam(self.disc.parameters(), lr=cfg.lr_d, betas=betas)}

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        n = x.shape[0]
        for _ in range(self.config.d_steps):
            with torch.no_grad():
                fake = self.generate(self.latent(n, generator))
            real_logit, fake_logit = self.disc(x).squeeze(1), self.disc(fake).squeeze(1)
            # -[log D(x) + log(1 - D(g(z)))] = softplus(-d(x)) + softplus(d(g(z)))
            loss_d = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
            self.optimizers()["discriminator"].zero_grad()
            loss_d.backward()
            self.optimizers()["discriminator"].step()
        fake_logit = self.disc(self.generate(self.latent(n, generator))).squeeze(1)
        loss_g = F.softplus(-fake_logit).mean()            # non-saturating: -log D(g(z))
        self.optimizers()["generator"].zero_grad()
        loss_g.backward()
        self.optimizers()["generator"].step()
        with torch.no_grad():
            d_real = torch.sigmoid(real_logit).mean()
            d_fake = torch.sigmoid(fake_logit).mean()
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()),
                "d_real": float(d_real), "d_fake": float(d_fake)}
