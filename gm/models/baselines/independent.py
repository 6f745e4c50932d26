"""Independent Bernoulli pixels: p(x) = prod_j m_j^x_j (1 - m_j)^(1 - x_j), exact log p(x).

m_j = (S_j + c) / (N + 2c): the posterior mode under a Beta(1 + c, 1 + c) prior (c = 1, the
default, is Laplace's rule of succession), so no probability is 0 or 1.  The one-component
case of :class:`~gm.models.baselines.base.BernoulliMixtures`: the first epoch's M-step gives
the estimate (later epochs on fixed binary data repeat it).
"""
from __future__ import annotations

from dataclasses import dataclass

from gm.config import Checked, ranged
from gm.models.baselines.base import BernoulliMixtures
from gm.registry import register


@dataclass(frozen=True)
class IndependentConfig(Checked):
    pseudocount: float = ranged(1.0, gt=0)   # c: pseudo-counts of 0 and of 1 per pixel


@register("independent")
class Independent(BernoulliMixtures):
    """Buffers as :class:`BernoulliMixtures` with one candidate of one component."""

    Config = IndependentConfig

    def __init__(self, data_dim: int, config: IndependentConfig):
        super().__init__(data_dim, config, [1], pseudocount=config.pseudocount,
                         prior_strength=None, weight_pseudocount=0.0)
