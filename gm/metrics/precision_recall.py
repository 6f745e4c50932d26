"""k-NN manifold metrics: improved precision and recall (Kynkaanniemi et al. 2019, sec. 2),
density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
generative models", sec. 3).

Each set's manifold is the union of balls around its points with radius the distance to the
point's k-th nearest neighbour in the same set.  Precision = fraction of generated points
inside the real manifold (are samples realistic?); recall = fraction of real points inside
the generated manifold (is the data covered?).  Density and coverage use the real balls
only, so outlying samples cannot inflate them: density = (1 / kM) sum_j #{real balls that
hold sample j} (about 1 when samples follow the data distribution, above 1 when they crowd
its dense regions), coverage = fraction of real balls that hold at least one sample (for
samples from the data distribution and M = N, about 1 - 2^-k).  Exact duplicates within a
set are separate neighbours at distance 0 (so on data with few distinct patterns, e.g. bars
and stripes, precision is the fraction of samples that are exactly valid patterns).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gm.metrics.distances import distances


def sorted_neighbours(d_self: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of the within-set distances (n, n) sorted, self last: (distances, indices)."""
    d = d_self.clone()
    d.fill_diagonal_(float("inf"))
    return d.sort(dim=1)


def knn_radii(d_self: Tensor, k: int, weights: Tensor | None = None,
              neighbours: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Distance from each point to its k-th nearest other point, (n,).

    d_self: (n, n) distances within a set.  weights: optional bootstrap multiplicities (n,):
    neighbours are then counted with multiplicity and a point's own copies are not its
    neighbours (a literal copy would make every radius 0).  Points of weight 0 get radius
    -inf (they are not in the set).  neighbours: :func:`sorted_neighbours` of d_self, if
    already computed (replicates then cost a gather and a cumsum, not a sort).
    """
    n = len(d_self)
    w = torch.ones(n, dtype=d_self.dtype) if weights is None else weights.to(d_self.dtype)
    if w.sum() - w.max() < k:
        raise ValueError(f"k-NN radii need more than k={k} points besides any one point")
    d_sorted, order = sorted_neighbours(d_self) if neighbours is None else neighbours
    r = torch.empty(n, dtype=d_sorted.dtype)
    rows = torch.arange(n)
    width = min(n, max(8 * k, 32))      # the k-th neighbour is almost always among the first
    while len(rows):
        d_part, counts = d_sorted[rows, :width], w[order[rows, :width]]
        counts[torch.isinf(d_part)] = 0   # the point itself (sorted last, at distance inf)
        reached = counts.cumsum(dim=1) >= k
        done = reached[:, -1] | (width == n)
        first = reached[done].to(torch.uint8).argmax(dim=1, keepdim=True)
        r[rows[done]] = d_part[done].gather(1, first).squeeze(1)
        rows, width = rows[~done], n        # the rare rest: all columns
    r[w == 0] = float("-inf")
    return r


def coverage(d_query_ref: Tensor, radii: Tensor) -> Tensor:
    """Whether each query lies in some reference ball, bool (n_query,).

    d_query_ref: (n_query, n_ref) distances; radii: (n_ref,) from :func:`knn_radii`."""
    return (d_query_ref <= radii[None, :]).any(dim=1)


class KNNManifolds:
    """Precomputed distances of generated (n, k) and real (m, k) points, for fast replicates.

    Calling it with multiplicities (n,), (m,) (bootstrap replicates; default all ones)
    returns {"precision", "recall", "density", "coverage"}.
    """

    def __init__(self, fake: Tensor, real: Tensor, k: int = 3):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        fake, real = fake.double(), real.double()
        self.d_ff, self.d_rr = distances(fake, fake), distances(real, real)
        self.d_fr = distances(fake, real)
        self.nb_ff, self.nb_rr = sorted_neighbours(self.d_ff), sorted_neighbours(self.d_rr)

    def __call__(self, w_fake: Tensor | None = None,
                 w_real: Tensor | None = None) -> dict[str, float]:
        n, m = self.d_fr.shape
        w_fake = torch.ones(n, dtype=torch.float64) if w_fake is None else w_fake.double()
        w_real = torch.ones(m, dtype=torch.float64) if w_real is None else w_real.double()
        r_real = knn_radii(self.d_rr, self.k, w_real, self.nb_rr)
        inside = self.d_fr <= r_real[None, :]          # (n, m): sample i in real ball j
        in_real = inside.any(dim=1)
        in_fake = coverage(self.d_fr.T, knn_radii(self.d_ff, self.k, w_fake, self.nb_ff))
        # density and coverage count real balls with their multiplicity (a ball of weight 0,
        # radius -inf, holds nothing) and samples only where present (weight > 0)
        held = inside.double() @ w_real                # (n,): real balls holding sample i
        covered = (inside & (w_fake > 0)[:, None]).any(dim=0)
        return {"precision": float((w_fake * in_real).sum() / w_fake.sum()),
                "recall": float((w_real * in_fake).sum() / w_real.sum()),
                "density": float((w_fake @ held) / (self.k * w_fake.sum())),
                "coverage": float((w_real * covered).sum() / w_real.sum())}


def precision_recall(fake: Tensor, real: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated points (n, d) against real points (m, d)."""
    r = KNNManifolds(fake, real, k)()
    return r["precision"], r["recall"]


def density_coverage(fake: Tensor, real: Tensor, k: int = 3) -> tuple[float, float]:
    """(density, coverage) of generated points (n, d) against real points (m, d)."""
    r = KNNManifolds(fake, real, k)()
    return r["density"], r["coverage"]
