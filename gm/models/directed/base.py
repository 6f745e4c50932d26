"""What every implicit generator model shares: x = g(z), z ~ N(0, I), no tractable p(x).

Used by the GAN, DCGAN and GMMN (book sections 20.10.4-20.10.6).  Their headline
``log_likelihood`` is the Parzen-window proxy of Goodfellow et al. 2014 (kind "proxy");
``validation_estimates`` adds decoder AIS (Wu et al. 2017) of the model made explicit by a
Gaussian observation model N(x; g(z), obs_std^2 I), also labelled a proxy since it is the
likelihood of that noisy model, not of the implicit one.  Its budget is the evaluation
budget's ``decoder_ais_*`` fields.

Parzen bandwidth protocol (:class:`gm.estimators.parzen.ParzenProxy`): evaluation calls
``prepare_evaluation(x_val, ...)`` once after training; it picks sigma on validation data from
a grid and keeps it in the buffer ``parzen_sigma`` (saved with the checkpoint).  If it was never
called, ``log_likelihood`` falls back to ``budget.parzen_sigma`` when set, else to two-fold
cross-fitting on the test batch (sigma for the even rows chosen on the odd rows and vice
versa), so no example's value ever uses a sigma chosen on itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gm.base import EitherView, GenerativeModel, check_data_view
from gm.config import Checked, ranged
from gm.estimators.decoder_ais import decoder_ais_estimate, gaussian_observation
from gm.estimators.parzen import ParzenProxy


@dataclass(frozen=True)
class ImplicitConfig(Checked):
    """Fields shared by implicit generator models (subclass; call super().__post_init__())."""

    latent_dim: int = ranged(16, ge=1)
    obs_std: float = ranged(0.1, gt=0)  # std of the Gaussian observation model of decoder AIS
    data_view: str = "binary"           # binary | real: the view of the dataset it trains on

    def __post_init__(self):
        super().__post_init__()
        check_data_view(self.data_view)


class ImplicitGenerator(EitherView, ParzenProxy, GenerativeModel):
    """Base of GAN/DCGAN/GMMN: subclasses define ``generate(z)`` (n, latent) -> (n, d) in [0, 1].

    ``log_likelihood`` and ``prepare_evaluation`` are the Parzen proxy's (:class:`ParzenProxy`).
    """

    def __init__(self, data_dim: int, config: ImplicitConfig):
        super().__init__(data_dim, config)
        self.init_parzen_sigma()

    def generate(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def latent(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, chunk: int = 2000) -> Tensor:
        return torch.cat([self.generate(self.latent(min(chunk, n - i), generator))
                          for i in range(0, n, chunk)])

    # --- decoder AIS with a Gaussian observation model ---------------------------------------
    @torch.no_grad()
    def validation_estimates(self, x, *, generator, budget):
        cfg = self.config
        return {"decoder_ais_gaussian": decoder_ais_estimate(
            x, gaussian_observation(self.generate, cfg.obs_std), cfg.latent_dim,
            generator=generator, budget=budget, kind="proxy", info={"obs_std": cfg.obs_std})}
