"""Convolutional GAN, DCGAN-style (book section 20.10.6; Radford, Metz & Chintala 2016).

Square images of side s = isqrt(data_dim).  Generator: a linear map of z to a
(c 2^(u-1), s/2^u, s/2^u) feature map, then ``u`` transposed convolutions (kernel 4, stride 2) that
double the side and halve the channels, ReLU between, sigmoid at the end.  Discriminator: the
mirror image, ``u`` strided convolutions (no pooling) with leaky ReLU, then a linear logit.
Batch normalisation is left out: the pipeline does not switch models to eval mode, and without
it samples do not depend on the batch they are drawn in.  Training and evaluation are the
GAN's (non-saturating loss, :mod:`gm.models.directed.gan`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from gm.config import ranged
from gm.errors import ConfigError, DataError
from gm.models.directed.gan import GAN, GANConfig
from gm.registry import register


@dataclass(frozen=True)
class DCGANConfig(GANConfig):
    channels: int = ranged(16, ge=1)    # channels of the last generator / first discriminator
    upsamplings: int = ranged(2, ge=1)  # stride-2 (transposed) convolutions u; the side must
                                        # divide by 2^u


def image_side(data_dim: int, upsamplings: int) -> int:
    """Side s of the square images, checked to be an integer divisible by 2^upsamplings."""
    side = math.isqrt(data_dim)
    if side * side != data_dim:
        raise DataError(f"dcgan: data of dimension {data_dim} is not a square image; "
                        "use a dataset of square images or the MLP gan")
    if side % 2**upsamplings:
        raise ConfigError("upsamplings",
                          f"image side {side} is not divisible by 2^{upsamplings}",
                          "lower upsamplings")
    return side


class Unflatten(nn.Module):
    """(n, c * h * w) -> (n, c, h, w)."""

    def __init__(self, c: int, h: int, w: int):
        super().__init__()
        self.shape = (c, h, w)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


@register("dcgan")
class DCGAN(GAN):
    """GAN with convolutional players for square single-channel images."""

    Config = DCGANConfig

    def build_players(self, data_dim: int, config: DCGANConfig):
        u, c = config.upsamplings, config.channels
        side = image_side(data_dim, u)
        s0 = side // 2**u
        widths = [c * 2**(u - 1 - i) for i in range(u)] + [1]   # e.g. u = 2: [2c, c, 1]
        gen: list[nn.Module] = [nn.Linear(config.latent_dim, widths[0] * s0 * s0),
                                Unflatten(widths[0], s0, s0)]
        for i in range(u):
            gen += [nn.ReLU(), nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1)]
        gen.append(nn.Flatten())
        disc: list[nn.Module] = [Unflatten(1, side, side)]
        for i in reversed(range(u)):
            disc += [nn.Conv2d(widths[i + 1], widths[i], 4, 2, 1), nn.LeakyReLU(0.2)]
        disc += [nn.Flatten(), nn.Linear(widths[0] * s0 * s0, 1)]
        return nn.Sequential(*gen), nn.Sequential(*disc)
