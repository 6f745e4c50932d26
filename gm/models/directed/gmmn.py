"""Generative moment-matching network (book section 20.10.5; Li, Swersky & Zemel 2015;
Dziugaite, Roy & Ghahramani 2015).

A generator x = g(z), z ~ N(0, I), trained by minimising the maximum mean discrepancy
sqrt(MMD^2) between a minibatch of data and one of samples, with a sum of Gaussian kernels of
several bandwidths (book eq. 20.82-20.83).  ``space: code`` is GMMN+AE: an autoencoder is
trained first (``ae_epochs`` epochs), then frozen, and the GMMN matches the distribution of its
codes; samples are decoded codes.  Evaluation: see :mod:`gm.models.directed.base`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gm.optim import Adam
from gm.base import Curve
from gm.config import ranged, require
from gm.models.directed.base import ImplicitConfig, ImplicitGenerator
from gm.nets import mlp
from gm.registry import register


def mmd_squared(x: Tensor, y: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    """Biased (V-statistic) MMD^2 between samples x (n, d) and y (m, d) under the kernel
    k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2)) (Li et al. 2015, eq. 1-2); a scalar."""
    xy = torch.cat([x, y])
    norms = (xy**2).sum(1)
    sq = (norms[:, None] + norms[None, :] - 2 * xy @ xy.T).clamp(min=0)
    k = sum(torch.exp(-sq / (2 * s**2)) for s in bandwidths)
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


@dataclass(frozen=True)
class GMMNConfig(ImplicitConfig):
    hidden: tuple[int, ...] = ranged((128, 128), ge=1, each=True)
    bandwidths: tuple[float, ...] = ranged((1.0, 2.0, 4.0, 8.0), gt=0, each=True)  # kernel
                                                            # widths in data space
    lr: float = ranged(1e-3, gt=0)
    space: Literal["data", "code"] = "data"                 # "code" = GMMN+AE
    code_dim: int = ranged(16, ge=1)                        # GMMN+AE: sigmoid code units
    ae_hidden: tuple[int, ...] = ranged((64,), ge=1, each=True)
    ae_epochs: int = ranged(30, ge=0)                       # GMMN+AE: autoencoder first
    code_bandwidths: tuple[float, ...] = ranged((0.25, 0.5, 1.0, 2.0), gt=0, each=True)
                                                            # ^ kernel widths in code space

    def __post_init__(self):
        super().__post_init__()
        for name in ("bandwidths", "code_bandwidths"):
            require(len(getattr(self, name)) >= 1, name, "need one or more widths")


@register("gmmn")
class GMMN(ImplicitGenerator):
    """GMMN in data space, or on an autoencoder's code (GMMN+AE)."""

    Config = GMMNConfig
    progress = Curve("mmd", "MMD of a generated batch to a data batch (training loss)")

    def __init__(self, data_dim: int, config: GMMNConfig):
        super().__init__(data_dim, config)
        code = config.space == "code"
        out = config.code_dim if code else data_dim
        self.gen = mlp([config.latent_dim, *config.hidden, out])
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))
        if code:
            h = list(config.ae_hidden)
            self.encoder = mlp([data_dim, *h, config.code_dim])
            self.decoder = mlp([config.code_dim, *h[::-1], data_dim])

    @property
    def in_code_space(self) -> bool:
        return self.config.space == "code"

    def encode(self, x: Tensor) -> Tensor:
        """Autoencoder code in [0, 1]^code_dim, (n, code_dim)."""
        return torch.sigmoid(self.encoder(x))

    def generate(self, z: Tensor) -> Tensor:
        out = torch.sigmoid(self.gen(z))
        return torch.sigmoid(self.decoder(out)) if self.in_code_space else out

    def make_optimizers(self):
        opts = {"gmmn": Adam(self.gen.parameters(), lr=self.config.lr)}
        if self.in_code_space:
            opts["autoencoder"] = Adam([*self.encoder.parameters(),
                                                    *self.decoder.parameters()], lr=self.config.lr)
        return opts

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.epochs_done += 1
        return {}

    def fit_step(self, x: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        if self.in_code_space and int(self.epochs_done) < cfg.ae_epochs:
            loss = F.binary_cross_entropy_with_logits(self.decoder(self.encode(x)), x,
                                                      reduction="none").sum(1).mean()
            self.optimizers()["autoencoder"].zero_grad()
            loss.backward()
            self.optimizers()["autoencoder"].step()
            return {"ae_loss": float(loss.detach())}
        if self.in_code_space:
            with torch.no_grad():
                target, widths = self.encode(x), cfg.code_bandwidths
        else:
            target, widths = x, cfg.bandwidths
        fake = torch.sigmoid(self.gen(self.latent(x.shape[0], generator)))
        mmd = mmd_squared(target, fake, widths).clamp(min=1e-12).sqrt()
        self.optimizers()["gmmn"].zero_grad()
        mmd.backward()
        self.optimizers()["gmmn"].step()
        return {"mmd": float(mmd.detach())}
