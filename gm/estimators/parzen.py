"""Parzen-window (Gaussian kernel density) proxy of log p(x) from model samples.

The protocol of Goodfellow et al. 2014 (sec. 5) for models without a tractable likelihood:
fit an isotropic Gaussian KDE to m samples of the model, choose its bandwidth sigma on
validation data from a grid, report the mean test log density.  It is a *proxy* (Theis et al.
2016 show it can rank models wrongly), never ranked against likelihoods.

p_sigma(x) = (1/m) sum_j N(x; s_j, sigma^2 I).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gm.base import Budget, LogLikelihood
from gm.errors import ConfigError

# Goodfellow et al.'s code (goodfeli/adversarial, parzen_ll.py): sigma in logspace(-1, 0, 10);
# extended downwards because 8x8 binary digits are far from their samples in few directions.
DEFAULT_GRID: tuple[float, ...] = tuple(float(s) for s in torch.logspace(-1.3, 0, 14))


@torch.no_grad()
def parzen_log_likelihood(x: Tensor, centers: Tensor, sigma: float, *,
                          chunk: int = 256) -> Tensor:
    """log p_sigma(x) for x (n, d) under the KDE on centers (m, d); returns (n,) float64."""
    x, centers = x.double(), centers.double().to(x.device)
    m, d = centers.shape
    c_sq = (centers**2).sum(1)
    out = []
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        sq = ((xb**2).sum(1, keepdim=True) - 2 * xb @ centers.T + c_sq).clamp(min=0)  # (b, m)
        out.append(torch.logsumexp(-sq / (2 * sigma**2), 1))
    norm = math.log(m) + 0.5 * d * math.log(2 * math.pi * sigma**2)
    return torch.cat(out) - norm


@torch.no_grad()
def select_bandwidth(x_val: Tensor, centers: Tensor,
                     grid: tuple[float, ...] = DEFAULT_GRID) -> tuple[float, list[dict]]:
    """The sigma of ``grid`` maximising the mean validation log density.

    x_val: (n, d) validation data; centers: (m, d) model samples.
    Returns (best sigma, table of {"sigma", "mean_log_likelihood"} rows).
    """
    table = [{"sigma": float(s), "mean_log_likelihood":
              float(parzen_log_likelihood(x_val, centers, float(s)).mean())} for s in grid]
    best = max(table, key=lambda r: r["mean_log_likelihood"])
    return best["sigma"], table


class ParzenProxy:
    """Mixin of a GenerativeModel whose ``log_likelihood`` is the Parzen proxy, with the
    bandwidth of the Goodfellow et al. (2014) protocol chosen on validation data.

    The host registers the buffer with :meth:`init_parzen_sigma` in ``__init__`` and may
    override :meth:`parzen_centers` (default: ``self.sample``).  Evaluation calls
    :meth:`prepare_evaluation` once before ``log_likelihood``; it chooses sigma on validation
    data and keeps it in the buffer ``parzen_sigma`` (NaN until then, saved with the
    checkpoint).  :meth:`log_likelihood` then evaluates test data at that sigma; before it, at
    a clearly labelled fallback (see :meth:`parzen_proxy`).
    Used by the implicit generators (:mod:`gm.models.directed.base`) and the autoencoder chains
    (:mod:`gm.models.chains.base`).
    """

    def init_parzen_sigma(self) -> None:
        self.register_buffer("parzen_sigma", torch.tensor(float("nan"), dtype=torch.float64))

    def parzen_centers(self, m: int, generator: torch.Generator) -> Tensor:
        """(m, d) model samples the window is centred on."""
        return self.sample(m, generator=generator)

    @torch.no_grad()
    def prepare_evaluation(self, x_val: Tensor, *, generator: torch.Generator,
                           budget: Budget) -> None:
        """Choose sigma on validation data x_val (n, d) from budget.parzen_samples fresh
        samples (:func:`select_bandwidth`) and keep it in the buffer ``parzen_sigma``."""
        sigma, _ = select_bandwidth(x_val, self.parzen_centers(budget.parzen_samples, generator))
        self.parzen_sigma.fill_(sigma)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, *, generator: torch.Generator,
                       budget: Budget) -> LogLikelihood:
        """Parzen proxy of x (n, d): kind "proxy", never a likelihood (:meth:`parzen_proxy`)."""
        return self.parzen_proxy(x, generator=generator, budget=budget)

    @torch.no_grad()
    def parzen_proxy(self, x: Tensor, *, generator: torch.Generator,
                     budget: Budget) -> LogLikelihood:
        """LogLikelihood (method "parzen", kind "proxy") of x (n, d) under budget.parzen_samples
        fresh samples.

        sigma is the validation-chosen ``parzen_sigma`` when :meth:`prepare_evaluation` was
        called (info sigma_from_validation = 1).  Otherwise (info sigma_from_validation = 0):
        ``budget.parzen_sigma`` if set (a fixed width), else two-fold cross-fitting on x
        (sigma of the even rows chosen on the odd rows and vice versa, so no example's value
        uses a sigma chosen on itself), which needs n >= 2.  For n = 1 it raises ConfigError
        (field parzen_sigma): the only data to choose sigma on would be the example itself
        (the optimistic fit the cross-fit exists to avoid), and choosing it on held-out model
        samples instead would score that example by another criterion than every other
        (the KDE's fit to the model, not the protocol's fit to data), silently mixing two
        protocols in one table; the error names the honest fixes.
        """
        fitted, fallback = float(self.parzen_sigma), budget.parzen_sigma
        cross_fit = math.isnan(fitted) and fallback is None
        if cross_fit and x.shape[0] < 2:
            raise ConfigError(
                "parzen_sigma", f"no Parzen bandwidth was chosen on validation data and "
                f"{x.shape[0]} example(s) cannot be cross-fitted (sigma would be chosen on the "
                "example itself)", "set parzen_sigma to a fixed width, or call "
                "prepare_evaluation with validation data first")
        centers = self.parzen_centers(budget.parzen_samples, generator)
        info = {"parzen_samples": float(centers.shape[0])}
        if not cross_fit:
            sigma = fitted if not math.isnan(fitted) else float(fallback)
            values = parzen_log_likelihood(x, centers, sigma)
            info |= {"sigma": sigma, "sigma_from_validation": float(not math.isnan(fitted))}
        else:
            values = torch.empty(x.shape[0], dtype=torch.float64)
            halves = (torch.arange(0, x.shape[0], 2), torch.arange(1, x.shape[0], 2))
            for rows, other, name in ((*halves, "even"), (*halves[::-1], "odd")):
                sigma, _ = select_bandwidth(x[other], centers)      # never on x[rows] itself
                values[rows] = parzen_log_likelihood(x[rows], centers, sigma).cpu()
                info[f"sigma_{name}_rows"] = sigma
            info["sigma_from_validation"] = 0.0
        return LogLikelihood(values, "parzen", "proxy", info=info)
