"""Seeded bootstrap confidence intervals for metrics of (samples, reference).

Efron & Tibshirani (1993), *An Introduction to the Bootstrap*: the standard (normal) interval
value +- z se_boot (sec. 12.2) and the percentile interval (ch. 13).  Plug-in metrics whose bias
depends on the sample size (FID; k-NN manifolds, whose replicates see only ~63% distinct
points) have replicates shifted away from the full-data value, so their percentile interval can
miss it; the normal interval is centred on the value and is the default of
:func:`gm.metrics.sample_metrics`.
A bootstrap replicate redraws every resampled set with replacement; it is represented by the
multiplicity of each original point, ``weights`` (n,) of non-negative integers summing to n.
Metrics that can take weights directly (weighted means, kernel sums, k-NN with counts) thereby
avoid the artefacts of literal copies (a copy is at distance 0 from its original, which would
collapse k-NN radii and inflate within-set kernel sums); see the ``weights`` arguments in
:mod:`gm.metrics.kernel`, :mod:`gm.metrics.precision_recall` and :mod:`gm.metrics.frechet`.
Any other function of arrays can be bootstrapped with :func:`bootstrap_arrays`.
"""
from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

Statistic = Callable[..., "float | Mapping[str, float]"]


@dataclass(frozen=True)
class Interval:
    """A point estimate on the full data and its bootstrap interval.

    value: the statistic on the original data; ci_low, ci_high: interval at ``level`` by
    ``method``; se: standard deviation of the bootstrap replicates; n_boot: replicates.
    """

    value: float
    ci_low: float
    ci_high: float
    se: float
    level: float
    n_boot: int
    method: str

    def as_dict(self) -> dict[str, float | int | str]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "se": self.se, "level": self.level, "n_boot": self.n_boot,
                "ci_method": self.method}

    def clipped(self, low: float, high: float) -> "Interval":
        """The interval intersected with the statistic's range [low, high]."""
        return dataclasses.replace(self, ci_low=min(max(self.ci_low, low), high),
                                   ci_high=max(min(self.ci_high, high), low))


def resample_weights(n: int, generator: torch.Generator) -> Tensor:
    """Multiplicities (n,) float64 of one bootstrap draw of n points with replacement."""
    idx = torch.randint(n, (n,), generator=generator)
    return torch.bincount(idx, minlength=n).to(torch.float64)


def bootstrap(statistic: Statistic, sizes: Sequence[int], *, n_boot: int,
              generator: torch.Generator, level: float = 0.95,
              method: str = "percentile") -> dict[str, Interval]:
    """Bootstrap ``statistic(*weights)`` over independently resampled sets.

    Parameters
    ----------
    statistic: called with one weight vector (n_i,) per entry of ``sizes`` (all ones for the
        original data); returns a float or a dict name -> float (several metrics from the
        same replicates, e.g. precision and recall).  A float is reported under "value".
    sizes: the number of points in each resampled set (fixed sets are closed over).
    n_boot: number of replicates (>= 2); generator: the only source of randomness.
    level: coverage of the two-sided interval.
    method: "percentile" (quantiles of the replicates) or "normal" (value +- z se).

    Returns
    -------
    name -> :class:`Interval`.  Replicates that return a non-finite number are dropped;
    if fewer than 2 remain the interval is (nan, nan).
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if method not in ("percentile", "normal"):
        raise ValueError(f"method must be 'percentile' or 'normal', got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    as_dict = lambda r: dict(r) if isinstance(r, Mapping) else {"value": r}  # noqa: E731
    full = as_dict(statistic(*[torch.ones(n, dtype=torch.float64) for n in sizes]))
    reps = {k: [] for k in full}
    for _ in range(n_boot):
        r = as_dict(statistic(*[resample_weights(n, generator) for n in sizes]))
        for k in reps:
            reps[k].append(float(r[k]))
    out = {}
    for k, v in full.items():
        t = torch.tensor(reps[k], dtype=torch.float64)
        t = t[torch.isfinite(t)]
        if t.numel() < 2:
            lo = hi = se = math.nan
        elif method == "percentile":
            q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
            lo, hi = (float(a) for a in torch.quantile(t, q))
            se = float(t.std())
        else:
            se = float(t.std())
            z = NormalDist().inv_cdf((1 + level) / 2)
            lo, hi = float(v) - z * se, float(v) + z * se
        out[k] = Interval(float(v), lo, hi, se, level, n_boot, method)
    return out


def bootstrap_arrays(fn: Callable[..., float], arrays: Sequence[Tensor], *, n_boot: int,
                     generator: torch.Generator, level: float = 0.95,
                     method: str = "percentile") -> Interval:
    """Bootstrap interval of any metric ``fn(*arrays)`` by resampling the rows of each array.

    arrays: e.g. (samples (n, d), reference (m, d)); each is resampled independently with
    replacement (literal copies: use the weighted forms of k-NN metrics instead).
    """
    arrays = [torch.as_tensor(a) for a in arrays]

    def statistic(*weights: Tensor) -> float:
        picked = [a[torch.repeat_interleave(torch.arange(len(a)), w.long())]
                  for a, w in zip(arrays, weights)]
        return float(fn(*picked))

    return bootstrap(statistic, [len(a) for a in arrays], n_boot=n_boot, generator=generator,
                     level=level, method=method)["value"]
