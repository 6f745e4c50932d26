"""Kernel two-sample distances: unbiased MMD^2 (Gretton et al. 2012, eq. 3) and KID.

KID (Binkowski et al. 2018) is MMD^2_u on classifier features with the cubic polynomial
kernel k(a, b) = (a.b / k + 1)^3 (k = feature dimension).  Pixel-space MMD^2 uses a Gaussian
kernel exp(-|a - b|^2 / (2 sigma^2)) whose bandwidth sigma is the median pairwise distance of
the reference set (the median heuristic, Gretton et al. 2012, sec. 8), so every model on a
dataset is scored with the same kernel.  MMD^2_u is unbiased and may be slightly negative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gm.metrics.distances import distances


def polynomial_kernel(a: Tensor, b: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """(a.b / k + coef0)^degree, (n, m) for a (n, k), b (m, k)."""
    return (a @ b.T / a.shape[1] + coef0) ** degree


def gaussian_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """exp(-|a - b|^2 / (2 bandwidth^2)), (n, m)."""
    return torch.exp(-distances(a, b) ** 2 / (2 * bandwidth**2))


def median_bandwidth(x: Tensor) -> float:
    """Median of the positive pairwise distances within x (n, d) (exact duplicates skipped)."""
    d = distances(x, x)
    d = d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]
    d = d[d > 0]
    if d.numel() == 0:
        raise ValueError("median_bandwidth: all points are identical; pass a bandwidth")
    return float(d.median())


def mmd2_unbiased(kxx: Tensor, kyy: Tensor, kxy: Tensor, wx: Tensor | None = None,
                  wy: Tensor | None = None) -> float:
    """Unbiased MMD^2 from kernel matrices kxx (n, n), kyy (m, m), kxy (n, m).

    wx, wy: optional bootstrap multiplicities (n,), (m,).  Within-set sums then run over pairs
    of draws that are different original points (pairs of copies of one point are left out,
    as the diagonal is in the plain U-statistic); with all weights 1 this is exactly
    Gretton et al.'s MMD^2_u.
    """
    wx = torch.ones(len(kxx), dtype=kxx.dtype) if wx is None else wx.to(kxx.dtype)
    wy = torch.ones(len(kyy), dtype=kyy.dtype) if wy is None else wy.to(kyy.dtype)

    def within(k: Tensor, w: Tensor) -> Tensor:
        pairs = w.sum() ** 2 - (w**2).sum()
        return (w @ k @ w - (w**2 * torch.diagonal(k)).sum()) / pairs

    cross = wx @ kxy @ wy / (wx.sum() * wy.sum())
    return float(within(kxx, wx) + within(kyy, wy) - 2 * cross)


@dataclass(frozen=True)
class KernelDistance:
    """MMD^2_u on all pairs (value) and a standard error from disjoint subsets.

    subset_se = sd(block estimates) / sqrt(n_subsets) over a random partition of both sets
    into n_subsets blocks.  It is the standard error of the block-mean estimator, which is
    conservative for ``value``: the all-pairs U-statistic averages the block mean over
    equal-sized partitions, so its variance is no larger (Rao-Blackwell; Hoeffding 1948).
    """

    value: float
    subset_se: float
    n_subsets: int


def subset_standard_error(kxx: Tensor, kyy: Tensor, kxy: Tensor, n_subsets: int,
                          generator: torch.Generator) -> tuple[float, int]:
    """(sd / sqrt(B) of MMD^2_u over B disjoint random blocks of both sets, B)."""
    n, m = len(kxx), len(kyy)
    b = min(n_subsets, n // 2, m // 2)
    if b < 2:
        return math.nan, b
    px = torch.randperm(n, generator=generator).tensor_split(b)
    py = torch.randperm(m, generator=generator).tensor_split(b)
    est = torch.tensor([mmd2_unbiased(kxx[i][:, i], kyy[j][:, j], kxy[i][:, j])
                        for i, j in zip(px, py)], dtype=torch.float64)
    return float(est.std() / math.sqrt(b)), b


def kid(features_x: Tensor, features_y: Tensor, *, generator: torch.Generator,
        n_subsets: int = 10) -> KernelDistance:
    """Kernel inception distance between feature sets (n, k) and (m, k), cubic kernel."""
    x, y = features_x.double(), features_y.double()
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    se, b = subset_standard_error(kxx, kyy, kxy, n_subsets, generator)
    return KernelDistance(mmd2_unbiased(kxx, kyy, kxy), se, b)


def mmd2_gaussian(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with a Gaussian kernel; bandwidth defaults to the median heuristic on y."""
    x, y = x.double(), y.double()
    s = median_bandwidth(y) if bandwidth is None else bandwidth
    return mmd2_unbiased(gaussian_kernel(x, x, s), gaussian_kernel(y, y, s),
                         gaussian_kernel(x, y, s))
