"""Mixture of multivariate Bernoullis (Bishop 2006, PRML sec. 9.3.3), K chosen on validation.

Training fits one mixture per K of ``components`` (times ``restarts`` random
initialisations) by EM, side by side (:mod:`gm.models.baselines.base`); evaluation's
``prepare_evaluation`` keeps the one with the best validation log-likelihood and reports its
K (LogLikelihood info and extras metrics "components", "restart",
"validation_ll_k<K>").  The test split never takes part in the choice.
"""
from __future__ import annotations

from dataclasses import dataclass

from gm.config import Checked, ranged, require
from gm.models.baselines.base import BernoulliMixtures
from gm.registry import register


@dataclass(frozen=True)
class MixtureConfig(Checked):
    components: tuple[int, ...] = ranged((5, 10, 25, 50, 75, 100, 150, 200), ge=1, each=True)
    restarts: int = ranged(1, ge=1)            # random initialisations per K
    pseudocount: float = ranged(1.0, gt=0)     # c of the pixel means m (Beta(1 + c, 1 + c))
    prior_strength: float = ranged(1.0, gt=0)  # a: pseudo-examples at m per component
    weight_pseudocount: float = ranged(1.0, ge=0)  # b: Dirichlet(1 + b) prior of the weights

    def __post_init__(self):
        super().__post_init__()
        require(len(self.components) > 0, "components", "needs at least one component count")
        require(len(set(self.components)) == len(self.components), "components",
                f"has repeated entries {list(self.components)}; use restarts for repeats")


@register("mixture_bernoulli")
class MixtureBernoulli(BernoulliMixtures):
    """Candidates: every K of ``components``, each ``restarts`` times (restarts adjacent)."""

    Config = MixtureConfig

    def __init__(self, data_dim: int, config: MixtureConfig):
        sizes = [k for k in config.components for _ in range(config.restarts)]
        super().__init__(data_dim, config, sizes, pseudocount=config.pseudocount,
                         prior_strength=config.prior_strength,
                         weight_pseudocount=config.weight_pseudocount)
